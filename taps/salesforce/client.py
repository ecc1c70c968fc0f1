"""Salesforce plumbing: OAuth, describe → JSON schema, value conversion, and the base stream's error handling."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from singer_sdk.authenticators import BearerTokenAuthenticator, OAuthAuthenticator

from plugins.connectors.tap_runtime import CdpRESTStream, ExtractionFailure
from plugins.core.dead_letters import ErrorType
from plugins.core.redaction import redact_url

if TYPE_CHECKING:
    from taps.salesforce.tap import TapSalesforce

LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
THROTTLE_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED"})
STRING_TYPES = frozenset(
    {"id", "string", "picklist", "multipicklist", "textarea", "phone", "url", "email", "reference", "combobox"}
    | {"encryptedstring", "base64", "anyType", "complexvalue", "json"}
)
NUMBER_TYPES = frozenset({"double", "currency", "percent"})
INTEGER_TYPES = frozenset({"int", "long"})
ADDRESS_KEYS = (
    "city",
    "country",
    "countryCode",
    "geocodeAccuracy",
    "latitude",
    "longitude",
    "postalCode",
    "state",
    "stateCode",
    "street",
)


# --- auth -----------------------------------------------------------------------------------------------------------


class SalesforceOAuthAuthenticator(OAuthAuthenticator):
    """The OAuth 2.0 refresh-token flow against ``/services/oauth2/token``.

    Salesforce answers no ``expires_in``: a token is used until a call answers 401 ``INVALID_SESSION_ID``, then
    :meth:`invalidate` makes the next request fetch a new one. The token response's ``instance_url`` is kept.
    """

    def __init__(self, *, token_url: str, client_id: str, client_secret: str, refresh_token: str) -> None:
        super().__init__(auth_endpoint=token_url, client_id=client_id, client_secret=client_secret)
        self._refresh_token = refresh_token
        self.instance_url: str | None = None
        self._session.hooks["response"].append(self._remember_instance_url)

    @property
    def oauth_request_body(self) -> dict[str, Any]:
        return {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self._refresh_token,
        }

    def _remember_instance_url(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.ok:
            with contextlib.suppress(ValueError):
                self.instance_url = str(response.json().get("instance_url") or "") or self.instance_url

    def update_access_token(self) -> None:
        try:
            super().update_access_token()
        except (RuntimeError, requests.RequestException) as exc:
            raise ExtractionFailure(
                f"the OAuth token endpoint refused the refresh token: {type(exc).__name__}: {exc}; check client_id, "
                "client_secret, refresh_token and token_url",
                error_type=ErrorType.AUTH_FAILED,
                request={"method": "POST", "url": redact_url(self.auth_endpoint), "params": {}},
            ) from None

    def invalidate(self) -> None:
        """Forget the current access token; the next request fetches a new one."""
        self.access_token = None
        self.last_refreshed = None


SalesforceAuthenticator = SalesforceOAuthAuthenticator | BearerTokenAuthenticator


# --- schema ---------------------------------------------------------------------------------------------------------


def _nullable(schema: dict[str, Any], nillable: bool) -> dict[str, Any]:
    if nillable:
        schema["type"] = [schema["type"], "null"]
    return schema


def field_schema(field: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one ``describe`` field, mapped from its Salesforce ``type``."""
    sf_type = str(field.get("type"))
    nillable = bool(field.get("nillable", True)) or sf_type in ("address", "location")
    schema: dict[str, Any]
    if sf_type == "boolean":
        schema = {"type": "boolean"}
    elif sf_type in INTEGER_TYPES:
        schema = {"type": "integer"}
    elif sf_type in NUMBER_TYPES:
        schema = {"type": "number"}
    elif sf_type == "date":
        schema = {"type": "string", "format": "date"}
    elif sf_type == "datetime":
        schema = {"type": "string", "format": "date-time"}
    elif sf_type == "time":
        schema = {"type": "string", "format": "time"}
    elif sf_type == "address":
        numeric = ("latitude", "longitude")
        schema = {
            "type": "object",
            "properties": {key: {"type": ["number" if key in numeric else "string", "null"]} for key in ADDRESS_KEYS},
        }
    elif sf_type == "location":
        schema = {
            "type": "object",
            "properties": {"latitude": {"type": ["number", "null"]}, "longitude": {"type": ["number", "null"]}},
        }
    else:  # id, string, picklist, textarea, reference, email, url, phone, base64 ... and anything new: text
        schema = {"type": "string"}
        if sf_type == "base64":
            schema["contentEncoding"] = "base64"
    schema = _nullable(schema, nillable)
    if field.get("label"):
        schema["title"] = str(field["label"])
    schema["x-salesforce-type"] = sf_type
    return schema


def describe_schema(describe: dict[str, Any]) -> dict[str, Any]:
    """The stream schema of an sObject from its ``describe`` answer: every field, custom ``*__c`` ones included."""
    properties = {str(field["name"]): field_schema(field) for field in describe.get("fields", [])}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def compound_components(describe_fields: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For each compound field (address, location): its components and the key each fills (BillingCity → city)."""
    compounds: dict[str, dict[str, str]] = {}
    for field in describe_fields:
        parent = field.get("compoundFieldName")
        if not parent:
            continue
        name = str(field["name"])
        base = str(parent).removesuffix("__c").removesuffix("Address")
        suffix = name.removeprefix(base).removeprefix("__").removesuffix("__s")
        compounds.setdefault(str(parent), {})[name] = suffix[:1].lower() + suffix[1:]
    return compounds


# --- values ---------------------------------------------------------------------------------------------------------


def parse_datetime(value: str) -> datetime:
    """A Salesforce or ISO-8601 datetime (``...000+0000``, ``...000Z``, ``+00:00``) as an aware UTC datetime."""
    text = value.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    return datetime.fromisoformat(text).astimezone(UTC)


def format_datetime(moment: datetime) -> str:
    """``moment`` as RFC 3339 UTC with milliseconds, which is also a valid SOQL datetime literal."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def normalise_datetime(value: str) -> str:
    """A Salesforce datetime (``...000+0000`` from REST, ``...000Z`` from Bulk) as RFC 3339 UTC with milliseconds."""
    return format_datetime(parse_datetime(value))


def soql_datetime(value: str) -> str:
    """An ISO-8601 instant as a SOQL datetime literal (unquoted, UTC)."""
    return normalise_datetime(value if re.search(r"T", value) else f"{value}T00:00:00Z")


def csv_converter(schema: dict[str, Any]) -> Callable[[str], Any]:
    """Converts a Bulk API CSV cell (always text, empty for null) to the field's JSON type."""
    sf_type = schema.get("x-salesforce-type")
    if sf_type == "boolean":
        return lambda text: None if text == "" else text == "true"
    if sf_type in INTEGER_TYPES:
        return lambda text: None if text == "" else int(float(text))
    if sf_type in NUMBER_TYPES:
        return lambda text: None if text == "" else float(text)
    if sf_type == "datetime":
        return lambda text: None if text == "" else normalise_datetime(text)
    return lambda text: None if text == "" else text


# --- the base stream ------------------------------------------------------------------------------------------------


def salesforce_errors(response: requests.Response) -> list[dict[str, Any]]:
    """The ``[{"errorCode", "message"}]`` list of an error answer (empty if the body is something else)."""
    try:
        body = response.json()
    except ValueError:
        return []
    if isinstance(body, dict):
        body = [body]
    return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []


class SalesforceStream(CdpRESTStream[str | None]):
    """Anything under ``{instance_url}/services/data/vXX.X``: auth from the tap, Salesforce's errors and limits."""

    _tap: TapSalesforce

    @property
    def url_base(self) -> str:
        return self._tap.data_url

    @property
    def authenticator(self) -> SalesforceAuthenticator:
        return self._tap.authenticator

    @property
    def http_headers(self) -> dict[str, str]:
        return {"User-Agent": "cdp-tap-salesforce/0.1", "Accept": "application/json"}

    @property
    def timeout(self) -> int:
        return float(self.config.get("request_timeout_seconds", 120))  # type: ignore[return-value]  # requests takes floats

    def throttle_delay(self, response: requests.Response) -> float | None:
        """429, and 403 ``REQUEST_LIMIT_EXCEEDED`` (Salesforce's concurrent/total request limits), back off."""
        if response.status_code == 403 and any(
            error.get("errorCode") in THROTTLE_CODES for error in salesforce_errors(response)
        ):
            return 0.0
        return super().throttle_delay(response)

    def pace_after_response(self, response: requests.Response) -> float:
        """Stop the stream before the org's daily API allocation is used past ``max_api_usage_percent``."""
        match = LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        limit_percent = float(self.config.get("max_api_usage_percent", 80))
        if match and int(match.group(2)) > 0:
            used, allowed = int(match.group(1)), int(match.group(2))
            if used * 100 / allowed > limit_percent:
                raise ExtractionFailure(
                    f"the org has used {used} of its {allowed} daily API requests, over max_api_usage_percent "
                    f"({limit_percent:g}%); the stream stops to leave the rest to other integrations",
                    error_type=ErrorType.RATE_LIMIT_EXHAUSTED,
                    request=self.describe_request(response.request),
                    status=response.status_code,
                )
        return 0.0

    def refresh_auth(self) -> bool:
        """A 401 ``INVALID_SESSION_ID``: with the refresh-token flow, fetch a new access token and retry once."""
        authenticator = self._tap.authenticator
        if isinstance(authenticator, SalesforceOAuthAuthenticator):
            authenticator.invalidate()
            return True
        return False

    def response_error_message(self, response: requests.Response) -> str:
        errors = salesforce_errors(response)
        if errors and "errorCode" in errors[0]:
            path = urlsplit(response.url).path
            detail = "; ".join(f"{e.get('errorCode')}: {str(e.get('message', '')).strip()[:300]}" for e in errors)
            return f"{response.status_code} {response.reason} for path {path}: {detail}"
        return super().response_error_message(response)

    def validate_response(self, response: requests.Response) -> None:
        """As the runtime's, except that a successful Bulk API CSV answer is not JSON."""
        if response.ok and response.headers.get("Content-Type", "").startswith("text/csv"):
            self._last_response = response
            return
        super().validate_response(response)


class DiscoveryRequests(SalesforceStream):
    """Not a stream: discovery's requests (``describe``), sent through the runtime like every other request."""

    path = "/sobjects"
    schema = {"type": "object", "properties": {}}  # the SDK's attribute
    name = "discovery"
