"""Redaction: the one place that decides what is a secret and hides it, in logs, DLQ entries, views and alerts.

- **Secret names** (:func:`is_secret_name`): a request parameter, header, setting or record property whose name is a
  known credential (``authorization``, ``x-api-key``, ``cookie``...), contains a secret word (``password``, ``secret``,
  ``token``, ``api_key``, ``signature``, ``credential``...) or ends in ``_key``. Taps redact such parameters and
  headers in their logs and DLQ entries (:func:`redact_params`, :func:`redact_url`, :func:`redact_headers`); ``cdp dlq
  show`` masks such properties (:class:`RecordMasker`).
- **Secrets in text** (:func:`redact_text`): bearer and basic credentials, ``access_token=...`` pairs, Stripe and
  Shopify keys, and any configured secret value, in error messages, log lines and alert messages.
- **Personal data** shown to people (:class:`RecordMasker`): a default PII name (``email``, ``phone``, ``name``,
  ``address``...), or a configured PII field: ``CDP_PII_FIELDS`` (comma-separated) or ``--mask-field``, each a property
  name (matched at any depth) or a dotted path from the record root (``billing.contact.mobile``). Under a masked name
  every value, however nested, is masked.

Secrets become ``<redacted>`` in what the pipeline stores and logs; values masked for display become ``***``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlsplit

PII_FIELDS_ENV = "CDP_PII_FIELDS"
REDACTED = "<redacted>"
MASK = "***"
#: Names that are credentials in themselves (headers, parameters, settings).
SECRET_NAMES = frozenset(
    {
        "key",
        "token",
        "secret",
        "signature",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth",
        "x-shopify-access-token",
    }
)
#: Words that make any name containing them secret (``client_secret``, ``refresh_token``, ``db_password``...).
SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "private_key",
    "credential",
    "signature",
    "cookie",
    "cvc",
    "cvv",
    "card_number",
)
#: Endings that make a name secret (``access_key``, ``x-partner-key``).
SECRET_NAME_SUFFIXES = ("_key", "-key")
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
_SECRET_IN_TEXT_RE = re.compile(
    r"(?P<scheme>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<param>\b(?:access_token|refresh_token|api_key|apikey|token|client_secret|password)=)[^&\s\"']+"
    r"|(?P<key>\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_]+|\bshp(?:at|ca|pa|ss)_[A-Za-z0-9]+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a parameter, header, setting or property called ``name`` holds a secret."""
    lowered = name.lower()
    return (
        lowered in SECRET_NAMES
        or any(part in lowered for part in SECRET_NAME_PARTS)
        or lowered.endswith(SECRET_NAME_SUFFIXES)
    )


def redact_text(text: str, secrets: Iterable[str] = (), marker: str = REDACTED) -> str:
    """``text`` (an error message, a log line, an alert) without credentials or any of the given secret values."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, marker)

    def replace(match: re.Match[str]) -> str:
        prefix = match["scheme"] or match["param"]
        return f"{prefix}{marker}" if prefix else marker

    return _SECRET_IN_TEXT_RE.sub(replace, text)


def redact_params(params: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``params`` with the values of secret-named parameters replaced by ``<redacted>``."""
    pairs: Iterable[tuple[str, Any]] = params.items() if isinstance(params, Mapping) else params
    return {str(key): (REDACTED if is_secret_name(str(key)) else value) for key, value in pairs}


def redact_url(url: str) -> str:
    """``url`` without user info and with secret query parameters redacted; everything else is kept as written.

    Edited as text, not re-assembled: ``urlunsplit`` drops the empty host of ``sqlite:////path`` or
    ``postgresql:///db?host=/socket`` and re-encodes the query.
    """
    parts = urlsplit(url)
    shown = url
    if "@" in parts.netloc:
        shown = shown.replace(f"//{parts.netloc}", f"//{parts.netloc.rsplit('@', 1)[-1]}", 1)
    if parts.query:
        pieces = parts.query.split("&")
        kept = [
            f"{piece.split('=', 1)[0]}={REDACTED}" if is_secret_name(unquote_plus(piece.split("=", 1)[0])) else piece
            for piece in pieces
        ]
        if kept != pieces:
            shown = shown.replace(f"?{parts.query}", f"?{'&'.join(kept)}", 1)
    return shown


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with credentials (Authorization, tokens, keys, cookies, signatures) redacted."""
    return {key: (REDACTED if is_secret_name(key) else value) for key, value in headers.items()}


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
        if is_secret_name(lowered):
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
            return redact_text(value, marker=MASK)
        return value


def _mask_all(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _mask_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_all(item) for item in value]
    if value is None:
        return None
    return MASK
