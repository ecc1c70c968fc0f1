"""An emulator of the Data Manager API's audience member ingestion (REST, as Google documents it), for tests and
``cdp sandbox serve google``.

``POST /v1/audienceMembers:ingest`` and ``POST /v1/audienceMembers:remove`` with ``Authorization: Bearer TOKEN``
(``SandboxOptions.credentials["token"]``, default :data:`DEFAULT_TOKEN`). It checks what Google checks: 1 to 10
``destinations`` with an ``operatingAccount`` {accountType, accountId} and a ``productDestinationId``; 1 to 10,000
``audienceMembers``, each with 1 to 10 user identifiers; ``encoding`` HEX or BASE64 and every hashed value a SHA-256
in that encoding; ``regionCode`` two upper-case letters; consent and terms-of-service values from their enums. An
invalid request is a 400 ``INVALID_ARGUMENT`` with ``BadRequest.fieldViolations``; a good one answers ``{"requestId"}``
and (unless ``validateOnly``) changes the audience, kept in ``app.state.audiences`` by ``(accountType, accountId,
productDestinationId)`` as the members' identifier sets. ``app.state.requests`` records every request (arrival time,
path, member count, consents, status) so tests count from the provider's side.

Faults (``SandboxOptions.faults``): the counted ones (``rate_limit_*``: 429 ``RESOURCE_EXHAUSTED`` with a
``RetryInfo`` delay; ``outage_*``: 503 ``UNAVAILABLE`` with ``Retry-After``; ``server_error_*``: 500 ``INTERNAL``;
``slow_*``; ``malformed_*``: a cut-off body) and ``session_uses`` (the token works that many requests, then 401
``UNAUTHENTICATED``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.connectors.sandbox import COUNTED_FAULT_SETTINGS, Fault, SandboxOptions

DEFAULT_TOKEN = "google-sandbox-token"  # noqa: S105 - the sandbox's own, not a secret
MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
# The API's enums in proto order: proto3's JSON mapping takes a value's name or its number (the official client sends
# numbers, ``$alt=json;enum-encoding=int``), so the sandbox reads both.
ACCOUNT_TYPES = (
    "ACCOUNT_TYPE_UNSPECIFIED",
    "GOOGLE_ADS",
    "DISPLAY_VIDEO_PARTNER",
    "DISPLAY_VIDEO_ADVERTISER",
    "DATA_PARTNER",
    "GOOGLE_ANALYTICS_PROPERTY",
    "GOOGLE_AD_MANAGER_AUDIENCE_LINK",
    "FLOODLIGHT_CONFIG",
    "GOOGLE_AD_MANAGER",
)
ENCODINGS = ("ENCODING_UNSPECIFIED", "HEX", "BASE64")
CONSENT_VALUES = ("CONSENT_STATUS_UNSPECIFIED", "CONSENT_GRANTED", "CONSENT_DENIED")
CONSENT_KEYS = ("adUserData", "adPersonalization")
TERMS_VALUES = ("TERMS_OF_SERVICE_STATUS_UNSPECIFIED", "ACCEPTED", "REJECTED")
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_REGION = re.compile(r"^[A-Z]{2}$")

AudienceKey = tuple[str, str, str]


def enum_name(value: Any, names: tuple[str, ...]) -> str | None:
    """An enum field's value name, from its name or its number; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else None
    return value if value in names else None


def _error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Google's JSON error body (``google.rpc.Status`` over REST)."""
    return {"error": {"code": status, "message": message, "status": code, "details": details or []}}


def _hashed(value: Any, encoding: str) -> bool:
    if not isinstance(value, str):
        return False
    if encoding == "HEX":
        return bool(_HEX_SHA256.match(value))
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _identifier_violations(index: int, member: Mapping[str, Any], encoding: str) -> list[tuple[str, str]]:
    where = f"audience_members[{index}]"
    identifiers = (member.get("userData") or {}).get("userIdentifiers")
    if not isinstance(identifiers, list) or not identifiers:
        return [(f"{where}.user_data", "at least one user identifier is required")]
    if len(identifiers) > MAX_IDENTIFIERS:
        return [(f"{where}.user_data.user_identifiers", f"at most {MAX_IDENTIFIERS} user identifiers per member")]
    violations = []
    for position, identifier in enumerate(identifiers):
        field = f"{where}.user_data.user_identifiers[{position}]"
        if not isinstance(identifier, Mapping) or len(identifier) != 1:
            violations.append((field, "exactly one of email_address, phone_number, address"))
        elif "emailAddress" in identifier or "phoneNumber" in identifier:
            name = "email_address" if "emailAddress" in identifier else "phone_number"
            if not _hashed(next(iter(identifier.values())), encoding):
                violations.append((f"{field}.{name}", f"not a {encoding}-encoded SHA-256 hash"))
        elif "address" in identifier:
            address = identifier["address"] if isinstance(identifier["address"], Mapping) else {}
            for name, key in (("given_name", "givenName"), ("family_name", "familyName")):
                if not _hashed(address.get(key), encoding):
                    violations.append((f"{field}.address.{name}", f"not a {encoding}-encoded SHA-256 hash"))
            if not _REGION.match(str(address.get("regionCode", ""))):
                violations.append((f"{field}.address.region_code", "a two-letter upper-case ISO 3166-1 code"))
            if not str(address.get("postalCode", "")).strip():
                violations.append((f"{field}.address.postal_code", "required"))
        else:
            violations.append((field, "unknown user identifier"))
    consent = member.get("consent")
    if consent is not None:
        for name, key in (("ad_user_data", "adUserData"), ("ad_personalization", "adPersonalization")):
            if key in consent and enum_name(consent[key], CONSENT_VALUES) is None:
                violations.append((f"{where}.consent.{name}", f"not one of {', '.join(CONSENT_VALUES)}"))
    return violations


def _destination_violations(destinations: Any) -> list[tuple[str, str]]:
    if not isinstance(destinations, list) or not 1 <= len(destinations) <= MAX_DESTINATIONS:
        return [("destinations", f"1 to {MAX_DESTINATIONS} destinations are required")]
    violations = []
    for index, target in enumerate(destinations):
        where = f"destinations[{index}]"
        for name, key in (("operating_account", "operatingAccount"), ("login_account", "loginAccount")):
            account = target.get(key)
            if account is None and key == "loginAccount":
                continue
            account_type = (
                enum_name(account.get("accountType"), ACCOUNT_TYPES) if isinstance(account, Mapping) else None
            )
            if account is None or account_type in (None, "ACCOUNT_TYPE_UNSPECIFIED"):
                violations.append((f"{where}.{name}.account_type", "a known account type is required"))
            elif not str(account.get("accountId", "")).isdigit():
                violations.append((f"{where}.{name}.account_id", "the account id, digits only"))
        if not str(target.get("productDestinationId", "")).strip():
            violations.append((f"{where}.product_destination_id", "the audience (user list) id is required"))
    return violations


def _identifier_keys(member: Mapping[str, Any]) -> frozenset[str]:
    keys = set()
    for identifier in member["userData"]["userIdentifiers"]:
        for name, value in identifier.items():
            text = "|".join(f"{k}={v}" for k, v in sorted(value.items())) if isinstance(value, Mapping) else value
            keys.add(f"{name}:{str(text).lower()}")
    return frozenset(keys)


def create_sandbox(options: SandboxOptions | None = None, *, retry_delay_seconds: float = 1.0) -> Starlette:
    """The Data Manager API emulator; throttled answers ask for ``retry_delay_seconds``."""
    options = options or SandboxOptions()
    options.faults.require_only("google", (*COUNTED_FAULT_SETTINGS, "session_uses"))
    token = options.credentials.get("token", DEFAULT_TOKEN)
    audiences: dict[AudienceKey, set[frozenset[str]]] = {}
    indexes: dict[AudienceKey, dict[str, set[frozenset[str]]]] = {}  # identifier -> the kept members who have it
    requests: list[dict[str, Any]] = []

    async def audience_members(request: Request) -> Response:
        count = len(requests) + 1
        seen: dict[str, Any] = {"at": time.time(), "path": request.url.path, "members": 0, "consents": [], "status": 0}
        requests.append(seen)

        def answer(status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
            seen["status"] = status
            return JSONResponse(dict(payload), status, headers=dict(headers or {}))

        uses = options.faults.session_uses
        if request.headers.get("authorization") != f"Bearer {token}" or (uses and count > uses):
            return answer(
                401,
                _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        fault = options.faults.counted_fault(count)
        if fault is Fault.RATE_LIMIT:
            delay = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay_seconds:g}s"}]
            return answer(429, _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for requests per minute.", delay))
        if fault is Fault.OUTAGE:
            return answer(
                503,
                _error(503, "UNAVAILABLE", "The service is currently unavailable."),
                {"Retry-After": f"{retry_delay_seconds:g}"},
            )
        if fault is Fault.SERVER_ERROR:
            status = options.faults.server_error_status or 500
            return answer(status, _error(status, "INTERNAL", "Internal error encountered."))
        if fault is Fault.SLOW:
            await asyncio.sleep(options.faults.slow_seconds)
        if fault is Fault.MALFORMED:
            seen["status"] = 200
            return Response(b'{"requestId": "', 200, media_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            return answer(400, _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        members = body.get("audienceMembers")
        destinations = body.get("destinations")
        seen["members"] = len(members) if isinstance(members, list) else 0
        violations = _destination_violations(destinations)
        encoding = enum_name(body.get("encoding", 0), ENCODINGS)
        if not isinstance(members, list) or not members:
            violations.append(("audience_members", "at least one audience member is required"))
        elif len(members) > MAX_MEMBERS:
            violations.append(("audience_members", f"at most {MAX_MEMBERS} audience members per request"))
        elif encoding not in ("HEX", "BASE64"):
            violations.append(("encoding", "HEX or BASE64 is required for user data"))
        else:
            for index, member in enumerate(members):
                violations += _identifier_violations(index, member, str(encoding))
                if len(violations) >= 20:
                    break
            if request.url.path.endswith(":ingest"):  # proto3: a value left out is the default, UNSPECIFIED
                seen["consents"] = [
                    {key: enum_name((member.get("consent") or {}).get(key, 0), CONSENT_VALUES) for key in CONSENT_KEYS}
                    for member in members
                ]
        terms = (body.get("termsOfService") or {}).get("customerMatchTermsOfServiceStatus")
        if terms is not None and enum_name(terms, TERMS_VALUES) is None:
            violations.append(("terms_of_service.customer_match_terms_of_service_status", "unknown status"))
        if violations:
            bad_request = {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": why} for field, why in violations[:20]],
            }
            return answer(400, _error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", [bad_request]))
        if not body.get("validateOnly"):
            for target in destinations:
                account = target["operatingAccount"]
                account_type = str(enum_name(account["accountType"], ACCOUNT_TYPES))
                key = (account_type, str(account["accountId"]), str(target["productDestinationId"]))
                audience = audiences.setdefault(key, set())
                kept_by = indexes.setdefault(key, {})
                for member in members:
                    identifiers = _identifier_keys(member)
                    if request.url.path.endswith(":ingest"):
                        audience.add(identifiers)
                        for identifier in identifiers:
                            kept_by.setdefault(identifier, set()).add(identifiers)
                        continue
                    # A kept member who shares an identifier with the one removed goes: Google matches them so.
                    for identifier in identifiers:
                        for kept in kept_by.pop(identifier, set()):
                            audience.discard(kept)
                            for other in kept - {identifier}:
                                kept_by.get(other, set()).discard(kept)
        return answer(200, {"requestId": str(uuid.uuid4())})

    app = Starlette(
        routes=[
            Route("/v1/audienceMembers:ingest", audience_members, methods=["POST"]),
            Route("/v1/audienceMembers:remove", audience_members, methods=["POST"]),
        ]
    )
    app.state.audiences = audiences
    app.state.requests = requests
    return app
