"""Webhook verification and mapping: the handler protocol every provider implements, and the signature schemes.

A source plugin hands a :class:`WebhookHandler` to the framework through its ``cdp_sources`` descriptor
(``SourceDescriptor.webhook_handler``). The receiver (``cdp webhooks serve``) calls ``verify`` on the raw request
before anything is stored, then ``map`` to turn the body into :class:`WebhookEvent` objects (stream, provider event id,
topic, received time, payload). This module holds only what every provider shares: the handler protocol, the HMAC
helpers, :class:`HmacHeaderScheme` (one header holding the HMAC-SHA256 of the raw body, hex or base64: Shopify's
``X-Shopify-Hmac-Sha256`` in base64, Salesforce's and custom apps' in a configured header) and the secrets lookup.
Each provider's own scheme lives with its connector (Stripe's ``Stripe-Signature`` in ``taps/stripe/webhook.py``).

Every comparison is constant-time (``hmac.compare_digest``); secrets are tried in order, so rotation works by
configuring the new and the old secret together. Secrets come from ``CDP_WEBHOOK_SECRET__{TENANT}__{PROVIDER}``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from plugins.core.errors import CdpError, ConfigError
from plugins.core.layout import sanitize_stream_name
from plugins.core.serialization import loads

SECRET_ENV_PREFIX = "CDP_WEBHOOK_SECRET"  # noqa: S105  # The variable name, not a secret.
# The request headers stored with a dead-lettered delivery unless a handler names its own (``dlq_headers``): an
# allowlist, because any other header may carry a credential (X-Api-Key, X-Auth, ...).
DEFAULT_DLQ_HEADERS = ("content-type", "content-length", "user-agent")


class WebhookSignatureError(CdpError):
    """A webhook's signature is missing, malformed, wrong, or its timestamp is outside the tolerance.

    ``reason`` is a short stable code for counters and logs (``missing``, ``malformed``, ``mismatch``, ``stale``).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class UnmappableWebhookError(CdpError):
    """A correctly signed webhook whose body is not JSON or that the handler cannot turn into events."""


@dataclass(frozen=True)
class WebhookEvent:
    """One provider event, ready for the durable log: which stream it feeds and the provider's own id for dedupe."""

    stream: str
    event_id: str
    topic: str
    received_at: datetime
    payload: dict[str, Any]
    # The payload's JSON text exactly as the provider sent it, when the payload is the whole body: the log stores
    # this text, so no value is changed by parsing and encoding it again.
    payload_json: bytes | None = None


@runtime_checkable
class WebhookHandler(Protocol):
    """Verifies and maps one provider's webhooks. ``headers`` keys are lower case; ``body`` is the raw request body.

    A handler may also name ``dlq_headers``: the (lower-case) request headers worth keeping with a dead-lettered
    delivery; without it, :data:`DEFAULT_DLQ_HEADERS`.
    """

    @property
    def provider(self) -> str:
        """The provider's name, as in the receiver's path (``/webhooks/{tenant}/{provider}``)."""

    @property
    def streams(self) -> Sequence[str]:
        """Every stream ``map`` can name (tap-webhooks drains each one)."""

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        """Return if any of ``secrets`` signed this request; raise WebhookSignatureError otherwise."""

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        """The events this (verified) request carries; raise UnmappableWebhookError when it cannot be read."""


@functools.lru_cache(maxsize=1024)
def _keyed_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def hmac_sha256(secret: str, data: bytes) -> bytes:
    """The raw HMAC-SHA256 digest of ``data`` under ``secret`` (UTF-8).

    Copies a keyed HMAC instead of calling ``hmac.digest``: the one-shot form releases the GIL on every call, and in a
    busy receiver getting it back costs far more than the digest itself.
    """
    mac = _keyed_hmac(secret).copy()
    mac.update(data)
    return mac.digest()


def secret_env_var(tenant: str, provider: str) -> str:
    """``CDP_WEBHOOK_SECRET__{TENANT}__{PROVIDER}``: upper case, ``-`` becomes ``_``."""
    return f"{SECRET_ENV_PREFIX}__{_env_part(tenant)}__{_env_part(provider)}"


def _env_part(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def colliding_tenants(tenants: Sequence[str]) -> dict[str, list[str]]:
    """Tenant names that would share one secret variable (``acme-x`` and ``acme_x``), by that variable's tenant part."""
    by_part: dict[str, list[str]] = {}
    for tenant in dict.fromkeys(tenants):
        by_part.setdefault(_env_part(tenant), []).append(tenant)
    return {part: names for part, names in by_part.items() if len(names) > 1}


def webhook_secrets(tenant: str, provider: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The secrets configured for ``tenant``/``provider`` (comma separated, newest first); empty when none are."""
    raw = (os.environ if environ is None else environ).get(secret_env_var(tenant, provider), "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` parsed as a JSON object (numbers exact: see ``plugins.core.serialization.loads``), or
    UnmappableWebhookError."""
    try:
        value = loads(body)
    except ValueError as exc:  # Not JSON, or a value JSON cannot carry (NaN, 1e999, invalid UTF-8).
        raise UnmappableWebhookError(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UnmappableWebhookError(f"body is a JSON {type(value).__name__}, not an object")
    return value


class SignatureEncoding(StrEnum):
    """How a header carries the digest."""

    HEX = "hex"
    BASE64 = "base64"


@dataclass(frozen=True)
class HmacHeaderScheme:
    """One header holding HMAC-SHA256 of the raw body, hex or base64, optionally after a prefix like ``sha256=``."""

    header: str
    encoding: SignatureEncoding = SignatureEncoding.HEX
    prefix: str = ""

    def __post_init__(self) -> None:
        if not self.header or not re.fullmatch(r"[A-Za-z0-9-]+", self.header):
            raise ConfigError("signature_header", f"'{self.header}' is not an HTTP header name")
        object.__setattr__(self, "header", self.header.lower())
        object.__setattr__(self, "encoding", SignatureEncoding(self.encoding))

    def _decode(self, value: str) -> bytes:
        value = value.strip()
        if self.prefix:
            if not value.startswith(self.prefix):
                raise WebhookSignatureError("malformed", f"{self.header} does not start with '{self.prefix}'")
            value = value[len(self.prefix) :]
        try:
            if self.encoding is SignatureEncoding.HEX:
                return bytes.fromhex(value)
            return base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise WebhookSignatureError("malformed", f"{self.header} is not {self.encoding.value}") from exc

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        provided = headers.get(self.header)
        if not provided:
            raise WebhookSignatureError("missing", f"no {self.header} header")
        digest = self._decode(provided)
        # Check every secret (no early exit) so timing does not reveal which one matched.
        matched = False
        for secret in secrets:
            matched |= hmac.compare_digest(hmac_sha256(secret, body), digest)
        if not matched:
            raise WebhookSignatureError("mismatch", f"{self.header} does not match the body under any secret")

    def sign(self, body: bytes, secret: str) -> str:
        """The header value a sender computes (tests, sandboxes, the load generator)."""
        digest = hmac_sha256(secret, body)
        encoded = digest.hex() if self.encoding is SignatureEncoding.HEX else base64.b64encode(digest).decode()
        return f"{self.prefix}{encoded}"


@dataclass(frozen=True)
class JsonHmacWebhookHandler:
    """A generic handler for custom apps: one HMAC header, a JSON object body, one event per request.

    The event id comes from the ``id_header`` if set and present, else from the body field ``id_field``; the topic
    from ``topic_field`` (``type`` by default); every event feeds ``stream``.
    """

    provider: str
    stream: str
    scheme: HmacHeaderScheme
    id_field: str = "id"
    id_header: str | None = None
    topic_field: str = "type"
    dlq_headers: Sequence[str] = DEFAULT_DLQ_HEADERS

    @property
    def streams(self) -> Sequence[str]:
        return (self.stream,)

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        self.scheme.verify(headers, body, secrets)

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        document = json_object(body)
        event_id = headers.get(self.id_header.lower()) if self.id_header else None
        event_id = event_id or document.get(self.id_field)
        if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
            raise UnmappableWebhookError(f"body has no event id in '{self.id_field}'")
        topic = document.get(self.topic_field)
        return [
            WebhookEvent(
                stream=sanitize_stream_name(self.stream),
                event_id=str(event_id),
                topic=str(topic) if topic is not None else "",
                received_at=received_at,
                payload=document,
                payload_json=body,
            )
        ]
