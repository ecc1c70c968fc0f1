"""One-click unsubscribe (RFC 8058): the signed token of each email's link, and the endpoint that honours it.

A token is ``PAYLOAD.SIGNATURE``, both base64url without padding: the payload is the compact JSON array
``[tenant, campaign, customer_id, channel, address]`` and the signature HMAC-SHA256 over a version prefix and the
payload, keyed by ``CDP_UNSUBSCRIBE_SECRET`` (comma separated, newest first: links signed with an older key keep working
while it stays in the list, as the webhook secrets rotate). Links need no expiry: an unsubscribe is honoured whenever
it comes. The payload is encoded, not encrypted; it names only what the recipient already knows (their address).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plugins.core.errors import CdpError, ConfigError
from plugins.core.events import log_event

logger = logging.getLogger("cdp.activators.email")

SECRET_ENV_VAR = "CDP_UNSUBSCRIBE_SECRET"  # noqa: S105 - the variable's name, not a secret
POSTGRES_URL_ENV_VAR = "CDP_POSTGRES_URL"
_DOMAIN = b"cdp-unsubscribe-v1."  # Binds the MAC to this use: a key reused elsewhere cannot mint tokens.
MAX_TOKEN_LENGTH = 2048


class InvalidUnsubscribeTokenError(CdpError):
    """An unsubscribe token that is malformed or not signed by any configured key."""


@dataclass(frozen=True)
class UnsubscribeClaim:
    """Who a token unsubscribes, and from which campaign's channel."""

    tenant: str
    campaign: str
    customer_id: str
    channel: str
    address: str


def unsubscribe_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The configured keys, newest first; empty when ``CDP_UNSUBSCRIBE_SECRET`` is not set."""
    raw = (os.environ if environ is None else environ).get(SECRET_ENV_VAR, "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest()


def sign_token(claim: UnsubscribeClaim, secrets: Sequence[str]) -> str:
    """The token for ``claim``, signed with the newest key."""
    if not secrets:
        raise ConfigError(SECRET_ENV_VAR, "is not set; the one-click unsubscribe links need a signing key")
    fields = [claim.tenant, claim.campaign, claim.customer_id, claim.channel, claim.address]
    payload = _b64(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_b64(_mac(secrets[0], payload))}"


def verify_token(token: str, secrets: Sequence[str]) -> UnsubscribeClaim:
    """The claim a token carries, when one of ``secrets`` signed it; else InvalidUnsubscribeTokenError."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidUnsubscribeTokenError("the unsubscribe token is too long")
    payload, sep, signature = token.partition(".")
    if not sep or not payload or not signature:
        raise InvalidUnsubscribeTokenError("the unsubscribe token is not PAYLOAD.SIGNATURE")
    try:
        given = _unb64(signature)
        payload.encode("ascii")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidUnsubscribeTokenError("the unsubscribe token is not base64url") from None
    # Every key is tried, so the time taken does not tell which one (if any) nearly matched.
    matched = [hmac.compare_digest(_mac(secret, payload), given) for secret in secrets]
    if not any(matched):
        raise InvalidUnsubscribeTokenError("the unsubscribe token's signature does not match")
    try:
        fields = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        raise InvalidUnsubscribeTokenError("the unsubscribe token's payload is not JSON") from None
    if not (isinstance(fields, list) and len(fields) == 5 and all(isinstance(item, str) for item in fields)):
        raise InvalidUnsubscribeTokenError("the unsubscribe token's payload is not five strings")
    return UnsubscribeClaim(*fields)


# -- the endpoint on the webhook receiver ---------------------------------------------------------------------------

MAX_FORM_BYTES = 16 * 1024
_PAGE_HEADERS = {
    # Nothing to remember and nothing to leak: no cache, no referrer (the token is in the URL), no framing, no script.
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto">
<h1 style="font-size:1.3em">{title}</h1>
{body}
</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> Any:
    from starlette.responses import HTMLResponse

    return HTMLResponse(_PAGE.format(title=title, body=body), status_code=status, headers=_PAGE_HEADERS)


def is_one_click(content_type: str, body: bytes) -> bool:
    """Whether a POST body says ``List-Unsubscribe=One-Click`` (RFC 8058 3.1), URL-encoded or multipart/form-data."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        from email.parser import BytesParser
        from email.policy import HTTP

        form = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if name == "List-Unsubscribe" and isinstance(payload, bytes) and payload.strip() == b"One-Click":
                return True
        return False
    from urllib.parse import parse_qs

    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return False
    return "One-Click" in fields.get("List-Unsubscribe", [])


class UnsubscribeEndpoint:
    """``GET|POST /unsubscribe/{tenant}/{token}``: GET shows a page with a button (a link scanner's GET changes
    nothing); POST with ``List-Unsubscribe=One-Click`` suppresses the address at once and answers 200, without a
    redirect and without a cookie (RFC 8058). A token not signed by a current key, or for another tenant, is 403."""

    def __init__(self, postgres_url: str, secrets: Sequence[str], tenants: Sequence[str] = ()) -> None:
        self.postgres_url = postgres_url
        self.secrets = list(secrets)
        self.tenants = frozenset(tenants)
        self._schemas_ready: set[str] = set()

    def _claim(self, tenant: str, token: str) -> UnsubscribeClaim | None:
        if self.tenants and tenant not in self.tenants:
            return None
        try:
            claim = verify_token(token, self.secrets)
        except InvalidUnsubscribeTokenError as exc:
            log_event(logger, "unsubscribe_refused", logging.WARNING, tenant=tenant, reason=str(exc))
            return None
        if claim.tenant != tenant:
            log_event(logger, "unsubscribe_refused", logging.WARNING, tenant=tenant, reason="token of another tenant")
            return None
        return claim

    async def get(self, request: Any) -> Any:
        from html import escape

        claim = self._claim(request.path_params["tenant"], request.path_params["token"])
        if claim is None:
            return _page("This unsubscribe link is not valid", "<p>Use the link of a more recent email.</p>", 403)
        form = (
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit" style="font-size:1em;padding:.5em 1em">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", f"<p>Stop campaign emails to {escape(claim.address)}?</p>{form}")

    async def post(self, request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        tenant = request.path_params["tenant"]
        claim = self._claim(tenant, request.path_params["token"])
        if claim is None:
            return _page("This unsubscribe link is not valid", "<p>Nothing was changed.</p>", 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return _page("Request too large", "<p>Nothing was changed.</p>", 413)
        if not is_one_click(request.headers.get("content-type", ""), body):
            return _page("Not a one-click unsubscribe", "<p>The form must send List-Unsubscribe=One-Click.</p>", 400)
        try:
            await run_in_threadpool(self._suppress, claim)
        except Exception as exc:
            log_event(
                logger, "unsubscribe_failed", logging.ERROR, tenant=tenant, campaign=claim.campaign, error=str(exc)
            )
            response = _page("Please try again", "<p>Your request could not be saved just now.</p>", 503)
            response.headers["Retry-After"] = "30"
            return response
        log_event(logger, "unsubscribed", tenant=tenant, campaign=claim.campaign, channel=claim.channel)
        return _page("You are unsubscribed", "<p>You will get no more campaign emails at this address.</p>")

    def _suppress(self, claim: UnsubscribeClaim) -> None:
        import psycopg
        from plugins.activation import ensure_schema, suppress

        with psycopg.connect(self.postgres_url) as conn:
            if claim.tenant not in self._schemas_ready:
                ensure_schema(conn, claim.tenant)
                self._schemas_ready.add(claim.tenant)
            suppress(
                conn, claim.tenant, claim.channel, claim.address, "unsubscribe",
                customer_id=claim.customer_id, campaign=claim.campaign,
            )  # fmt: skip
            conn.commit()

    def routes(self) -> list[Any]:
        from starlette.routing import Route

        path = "/unsubscribe/{tenant}/{token}"
        return [Route(path, self.get, methods=["GET"]), Route(path, self.post, methods=["POST"])]


def receiver_routes(environ: Mapping[str, str] | None = None, tenants: Sequence[str] = ()) -> list[Any]:
    """The webhook receiver's unsubscribe routes (``ActivatorDescriptor.receiver_routes``): served when
    ``CDP_UNSUBSCRIBE_SECRET`` is set, writing suppressions to ``CDP_POSTGRES_URL``."""
    env = os.environ if environ is None else environ
    secrets = unsubscribe_secrets(env)
    if not secrets:
        return []
    postgres_url = env.get(POSTGRES_URL_ENV_VAR, "")
    if not postgres_url:
        raise ConfigError(
            POSTGRES_URL_ENV_VAR,
            f"is not set, but {SECRET_ENV_VAR} is: the one-click unsubscribe writes its suppressions to PostgreSQL",
        )
    return UnsubscribeEndpoint(postgres_url, secrets, tenants).routes()
