"""Adds members to and removes them from a Google audience through the Data Manager API
(``audienceMembers:ingest`` / ``audienceMembers:remove``), with Google's official client.

``google-ads-datamanager``'s REST transport takes an ``api_endpoint`` with its scheme (``http://127.0.0.1:PORT`` for
the sandbox, ``https://datamanager.googleapis.com`` by default), so the same client talks to the sandbox and to Google.
The client's own retries are turned off (``retry=None``): the delivery engine retries, honouring the delay Google
asks for, and records every attempt in the send log.

Settings (``ActivatorDescriptor.settings_schema``): ``operating_account_id`` and ``operating_account_type``
(``GOOGLE_ADS`` by default), ``audience_id`` (the ``productDestinationId``), optional ``login_account_id`` /
``login_account_type`` (a manager account) and ``linked_account_id`` / ``linked_account_type``, ``api_endpoint``,
``terms_of_service_accepted``, ``validate_only``, ``timeout``; credentials, secret: ``access_token``, or
``credentials_file`` (a service account or authorized-user JSON), else Application Default Credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.ads import datamanager_v1 as dm
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.protobuf import json_format

from activators.google.normalize import MAX_IDENTIFIERS, UserIdentifiers, user_identifiers
from plugins.core.http_headers import retry_after_seconds
from plugins.descriptors import Delivery, MemberOutcome, MemberResult, RetryableSendError, SendError

DEFAULT_ENDPOINT = "https://datamanager.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/datamanager"
#: Google's limit of members in one ingest or remove request.
MAX_MEMBERS_PER_REQUEST = 10_000
ACCOUNT_TYPES = tuple(name for name in dm.ProductAccount.AccountType.__members__ if name != "ACCOUNT_TYPE_UNSPECIFIED")

#: A member's ``consent_ads`` column -> the API's ConsentStatus (both adUserData and adPersonalization). Denied
#: members never reach the sender (the engine drops them); one that does is rejected here, never sent.
CONSENT_STATUS = {"granted": dm.ConsentStatus.CONSENT_GRANTED}
DENIED = frozenset({"denied", "revoked", "refused"})
UNSPECIFIED = dm.ConsentStatus.CONSENT_STATUS_UNSPECIFIED

# Failures worth another attempt later: quota (429 RESOURCE_EXHAUSTED), 5xx, deadlines.
RETRYABLE = (
    google_errors.TooManyRequests,
    google_errors.ResourceExhausted,
    google_errors.ServerError,
    google_errors.DeadlineExceeded,
)
AUTH_FAILURES = (google_errors.Unauthenticated, google_errors.PermissionDenied)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class GoogleSettingsError(SendError):
    """The destination's settings are incomplete or wrong (no audience id, an unknown account type)."""


def consent_status(value: Any) -> dm.ConsentStatus:
    """The ConsentStatus for a member's ``consent_ads`` value (``granted`` / anything else unknown)."""
    return dm.ConsentStatus(CONSENT_STATUS.get(str(value or "").strip().lower(), UNSPECIFIED))


def _account(settings: Mapping[str, Any], prefix: str, *, required: bool) -> dm.ProductAccount | None:
    account_id = str(settings.get(f"{prefix}_account_id") or "").replace("-", "").strip()
    if not account_id:
        if required:
            raise GoogleSettingsError(f"google: setting '{prefix}_account_id' is missing (the account's id, digits)")
        return None
    account_type = str(settings.get(f"{prefix}_account_type") or "GOOGLE_ADS").upper()
    if account_type not in ACCOUNT_TYPES:
        raise GoogleSettingsError(
            f"google: '{prefix}_account_type' {account_type!r} is not one of {', '.join(ACCOUNT_TYPES)}"
        )
    return dm.ProductAccount(account_type=getattr(dm.ProductAccount.AccountType, account_type), account_id=account_id)


def destination(settings: Mapping[str, Any]) -> dm.Destination:
    """The request's ``Destination`` from the settings."""
    audience = str(settings.get("audience_id") or "").strip()
    if not audience:
        raise GoogleSettingsError("google: setting 'audience_id' is missing (the Customer Match user list's id)")
    target = dm.Destination(
        operating_account=_account(settings, "operating", required=True), product_destination_id=audience
    )
    for prefix in ("login", "linked"):
        account = _account(settings, prefix, required=False)
        if account is not None:
            setattr(target, f"{prefix}_account", account)
    return target


# The protobuf classes under the client's proto-plus wrappers: building 10,000 members with them takes a tenth of the
# time proto-plus or JSON parsing take.
_MEMBER = dm.AudienceMember.pb()
_USER_DATA = dm.UserData.pb()
_IDENTIFIER = dm.UserIdentifier.pb()
_ADDRESS = dm.AddressInfo.pb()
_CONSENT = dm.Consent.pb()


def _user_data(identifiers: UserIdentifiers) -> Any:
    """``userData`` with at most ten identifiers: emails first, then phones, then the address."""
    values = [_IDENTIFIER(email_address=email) for email in identifiers.emails]
    values += [_IDENTIFIER(phone_number=phone) for phone in identifiers.phones]
    if identifiers.address is not None:
        address = identifiers.address
        values.append(
            _IDENTIFIER(
                address=_ADDRESS(
                    given_name=address.given_name,
                    family_name=address.family_name,
                    region_code=address.region_code,
                    postal_code=address.postal_code,
                )
            )
        )
    return _USER_DATA(user_identifiers=values[:MAX_IDENTIFIERS])


def _credentials(settings: Mapping[str, Any]) -> Any:
    """Google credentials from the settings; never logged or put in a message."""
    import google.auth
    from google.oauth2.credentials import Credentials

    try:
        if settings.get("access_token"):
            return Credentials(token=str(settings["access_token"]))  # type: ignore[no-untyped-call]
        if settings.get("credentials_file"):
            path = str(settings["credentials_file"])
            credentials, _ = google.auth.load_credentials_from_file(path, scopes=[SCOPE])  # type: ignore[no-untyped-call]
            return credentials
        credentials, _ = google.auth.default(scopes=[SCOPE])
        return credentials
    except google.auth.exceptions.GoogleAuthError as exc:
        raise SendError(
            f"google: no usable credentials ({type(exc).__name__}); set access_token or credentials_file, "
            "or configure Application Default Credentials"
        ) from None


def _retry_delay(exc: google_errors.GoogleAPICallError) -> float | None:
    """The wait Google asked for: the ``Retry-After`` header, else the error's ``RetryInfo.retryDelay``."""
    response = getattr(exc, "response", None)
    header = retry_after_seconds(response.headers.get("Retry-After")) if response is not None else None
    if header is not None:
        return header
    for detail in exc.details or ():
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _one_line(exc: google_errors.GoogleAPICallError) -> str:
    """``google Data Manager API answered 429 RESOURCE_EXHAUSTED: <Google's message> (<field violations>)``."""
    status = ""
    response = getattr(exc, "response", None)
    try:
        status = str(response.json()["error"]["status"]) if response is not None else ""
    except (ValueError, KeyError, TypeError):
        status = ""
    # The client prefixes the message with the request's method and URL; the URL says nothing the operator needs.
    message = re.sub(r"^[A-Z]+ \S+: ", "", " ".join(str(exc.message or "").split()))[:300]
    violations = [
        f"{violation.get('field')}: {violation.get('description')}"
        for detail in exc.details or ()
        if isinstance(detail, Mapping)
        for violation in detail.get("fieldViolations", ())
    ]
    where = f" ({'; '.join(violations[:3])})" if violations else ""
    return f"google Data Manager API answered {exc.code} {status}".rstrip() + f": {message}{where}"


class GoogleAudienceSender:
    """The ``Sender`` for Google audiences: one ingest or remove request per call (at most 10,000 members)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.destination = destination(settings)
        self.validate_only = bool(settings.get("validate_only", False))
        self.terms_accepted = bool(settings.get("terms_of_service_accepted", False))
        self.timeout = float(settings.get("timeout", 60))
        endpoint = str(settings.get("api_endpoint") or DEFAULT_ENDPOINT).rstrip("/")
        self.client = dm.IngestionServiceClient(
            transport="rest",
            credentials=_credentials(settings),
            client_options=ClientOptions(api_endpoint=endpoint),
        )

    def _members(
        self, deliveries: Sequence[Delivery], *, with_consent: bool
    ) -> tuple[list[Any], list[Delivery], list[MemberResult]]:
        """The request's members, the deliveries they stand for (in order), and the members rejected here."""
        members: list[Any] = []
        sent: list[Delivery] = []
        rejected: list[MemberResult] = []
        for delivery in deliveries:
            consent = str(delivery.columns.get("consent_ads") or "").strip().lower()
            if with_consent and consent in DENIED:
                rejected.append(MemberResult(delivery.member_id, MemberOutcome.REJECTED, "ads consent denied"))
                continue
            identifiers = user_identifiers(delivery.columns)
            if not identifiers:
                why = "; ".join(identifiers.skipped) or "no email, phone or full address"
                rejected.append(MemberResult(delivery.member_id, MemberOutcome.REJECTED, f"no identifier: {why}"))
                continue
            member = _MEMBER(user_data=_user_data(identifiers))
            if with_consent:
                status = consent_status(consent)
                member.consent.CopyFrom(_CONSENT(ad_user_data=status, ad_personalization=status))
            members.append(member)
            sent.append(delivery)
        return members, sent, rejected

    def _send(self, action: str, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        if len(deliveries) > MAX_MEMBERS_PER_REQUEST:
            raise SendError(f"google: {len(deliveries)} members in one call; the API takes {MAX_MEMBERS_PER_REQUEST}")
        adding = action == "ingest"
        members, sent, rejected = self._members(deliveries, with_consent=adding)
        if not members:
            return rejected
        common: dict[str, Any] = {
            "destinations": [self.destination],
            "audience_members": members,
            "validate_only": self.validate_only,
            "encoding": dm.Encoding.HEX,
        }
        try:
            if adding:
                request = dm.IngestAudienceMembersRequest(**common)
                if self.terms_accepted:
                    request.terms_of_service = dm.TermsOfService(
                        customer_match_terms_of_service_status=dm.TermsOfServiceStatus.ACCEPTED
                    )
                response: Any = self.client.ingest_audience_members(request=request, retry=None, timeout=self.timeout)
            else:
                response = self.client.remove_audience_members(
                    request=dm.RemoveAudienceMembersRequest(**common), retry=None, timeout=self.timeout
                )
        except AUTH_FAILURES as exc:
            raise SendError(f"{_one_line(exc)}; check the credentials and the account's access") from None
        except RETRYABLE as exc:
            raise RetryableSendError(_one_line(exc), _retry_delay(exc)) from None
        except google_errors.GoogleAPICallError as exc:
            raise SendError(_one_line(exc)) from None
        except Exception as exc:
            import google.auth.exceptions
            import requests

            if isinstance(exc, google.auth.exceptions.RefreshError):
                raise SendError(
                    "google Data Manager API refused the credentials and they could not be refreshed; check "
                    "access_token / credentials_file"
                ) from None
            if isinstance(exc, requests.RequestException | google.auth.exceptions.TransportError):
                raise RetryableSendError(f"google Data Manager API unreachable: {type(exc).__name__}") from None
            if isinstance(exc, json_format.ParseError):
                # A cut-off answer: whether Google took the members is unknown, and adding or removing the same
                # members again changes nothing, so the batch is sent again.
                raise RetryableSendError("google Data Manager API answered with a body that is not its JSON") from None
            raise
        # The API processes members asynchronously: the request id is what requestStatus:retrieve reports on.
        accepted = [
            MemberResult(d.member_id, MemberOutcome.ACCEPTED, provider_reference=response.request_id) for d in sent
        ]
        return accepted + rejected

    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._send("ingest", deliveries)

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._send("remove", deliveries)

    def close(self) -> None:
        self.client.transport.close()  # type: ignore[no-untyped-call]
