"""Masking of secrets and personal data in records shown to people (``cdp dlq show``).

A value is masked when its property name is a secret (any name containing ``password``, ``secret``, ``token``,
``api_key``, ``authorization``...), a default PII name (``email``, ``phone``, ``name``, ``address``...), or a configured
PII field: ``CDP_PII_FIELDS`` (comma-separated) or ``--mask-field``, each a property name (matched at any depth) or a
dotted path from the record root (``billing.contact.mobile``). Under a masked name every value, however nested, is
masked. Strings anywhere that look like credentials (``sk_live_...``, ``Bearer ...``, ``access_token=...``) are
redacted too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PII_FIELDS_ENV = "CDP_PII_FIELDS"
MASK = "***"
SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "credential",
    "cvc",
    "cvv",
    "card_number",
)
DEFAULT_PII_FIELDS = frozenset(
    {
        "email",
        "email_address",
        "phone",
        "phone_number",
        "mobile",
        "name",
        "first_name",
        "last_name",
        "full_name",
        "address",
        "line1",
        "line2",
        "postal_code",
        "birthdate",
        "date_of_birth",
        "ssn",
        "tax_id",
        "ip",
        "ip_address",
    }
)
_SECRET_VALUE_RE = re.compile(
    r"(?P<stripe>\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_]+)"
    r"|(?P<bearer>\bBearer\s+\S+)"
    r"|(?P<param>\b(?:access_token|api_key|apikey|token|client_secret|password)=)[^&\s\"']+",
    re.IGNORECASE,
)


def _redact_secret_text(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["param"]:
            return f"{match['param']}{MASK}"
        if match["bearer"]:
            return f"Bearer {MASK}"
        return MASK

    return _SECRET_VALUE_RE.sub(replace, text)


@dataclass(frozen=True)
class RecordMasker:
    """Masks records for display; ``fields`` are PII names or dotted paths on top of the defaults."""

    fields: frozenset[str] = field(default_factory=frozenset)
    use_defaults: bool = True

    @classmethod
    def configured(cls, extra: Iterable[str] = ()) -> RecordMasker:
        """The defaults, plus ``CDP_PII_FIELDS``, plus ``extra`` (e.g. ``--mask-field`` values)."""
        from_env = [part.strip() for part in os.environ.get(PII_FIELDS_ENV, "").split(",")]
        names = {name.lower() for name in [*from_env, *extra] if name and name.strip()}
        return cls(fields=frozenset(names))

    def _is_sensitive(self, name: str, path: str) -> bool:
        lowered = name.lower()
        if any(part in lowered for part in SECRET_NAME_PARTS):
            return True
        if self.use_defaults and lowered in DEFAULT_PII_FIELDS:
            return True
        return lowered in self.fields or path.lower() in self.fields

    def mask(self, value: Any, _path: str = "") -> Any:
        """A copy of ``value`` with sensitive values replaced by ``***``; the input is not changed."""
        if isinstance(value, dict):
            masked: dict[str, Any] = {}
            for key, item in value.items():
                path = f"{_path}.{key}" if _path else str(key)
                masked[key] = _mask_all(item) if self._is_sensitive(str(key), path) else self.mask(item, path)
            return masked
        if isinstance(value, list):
            return [self.mask(item, _path) for item in value]
        if isinstance(value, str):
            return _redact_secret_text(value)
        return value


def _mask_all(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _mask_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_all(item) for item in value]
    if value is None:
        return None
    return MASK
