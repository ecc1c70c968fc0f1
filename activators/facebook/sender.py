"""Adds members to (and removes them from) a Meta Custom Audience: ``POST``/``DELETE /{version}/{audience_id}/users``.

One delivery run is one upload session per action: every request carries ``session`` with the run's ``session_id``,
``batch_seq`` counting the accepted requests from 1, and ``last_batch_flag``. The framework calls :meth:`add` (or
:meth:`remove`) once per batch and cannot say which batch is the last. With the ``estimated_num_total`` setting (the
run's members), the batch that reaches it is flagged last. Otherwise, or when members were left out on the way
(consent, a re-run), :meth:`close` ends each open session with one more request, flagged last, that repeats the
session's final row (adding a member who is already in the audience, or removing one who is already out, changes
nothing). Unflagged, a session stays open on Meta's side until it times
out, and its match statistics are late.

Plain httpx rather than the SDK's ``CustomAudience.add_users``/``remove_users``. The SDK could reach the sandbox (its
``FacebookSession.GRAPH`` base URL can be overridden), but it sends ``DELETE`` parameters in the URL query string
(``FacebookAdsApi.call``), so removing 10,000 members makes a URL of megabytes that servers refuse, and it puts the
access token in the URL, where proxies and access logs keep it. The parameters are the SDK's,
``payload`` (``{schema, is_raw, data}``) and ``session``, sent as a JSON body, which the Graph API reads like form
fields (the sandbox takes both); the token goes in the ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from activators.facebook.normalize import members_table, payload_json, payload_rows
from plugins.core.errors import ConfigError
from plugins.core.events import log_event
from plugins.core.http_headers import retry_after_seconds
from plugins.descriptors import Delivery, MemberOutcome, MemberResult, RetryableSendError, SendError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v25.0"
#: Meta's documented maximum of members per request.
MAX_ROWS_PER_REQUEST = 10_000

# Graph API error codes (https://developers.facebook.com/docs/graph-api/guides/error-handling and the Marketing API's
# rate limiting page): throttling, transient server trouble, and credentials that no longer work.
THROTTLING_CODES = frozenset({4, 17, 32, 613, 80003})
TRANSIENT_CODES = frozenset({1, 2})
TOKEN_CODES = frozenset({190, 102})
PERMISSION_CODES = frozenset({10, 200, 294})
#: What to wait when a throttled answer does not say (Meta: "wait and retry", the usage headers say how long).
DEFAULT_THROTTLE_WAIT = 60.0
#: The closing request of a session (close()): its attempts, and the longest wait between two.
CLOSE_ATTEMPTS = 3
CLOSE_MAX_WAIT = 300.0
NO_IDENTIFIER = "no identifier Meta can match (email, phone or name)"


@dataclass
class UploadSession:
    """One action's upload session during a run: its id, the requests accepted so far and the last row sent."""

    session_id: int
    batches_sent: int = 0
    members_seen: int = 0
    last_row: str | None = None  # JSON array text
    closed: bool = False


def _wait_from_usage(headers: httpx.Headers) -> float | None:
    """Seconds until access is regained, from ``x-business-use-case-usage`` (minutes per business and use case), else
    ``x-ad-account-usage`` / ``x-app-usage``-style headers, else ``Retry-After``."""
    waits: list[float] = []
    usage = headers.get("x-business-use-case-usage")
    if usage:
        try:
            per_business = json.loads(usage)
            for entries in per_business.values():
                for entry in entries:
                    minutes = entry.get("estimated_time_to_regain_access")
                    if isinstance(minutes, int | float) and minutes > 0:
                        waits.append(float(minutes) * 60)
        except (ValueError, AttributeError, TypeError):
            pass
    account = headers.get("x-ad-account-usage")
    if account:
        try:
            seconds = json.loads(account).get("reset_time_duration")
            if isinstance(seconds, int | float) and seconds > 0:
                waits.append(float(seconds))
        except (ValueError, AttributeError):
            pass
    retry_after = retry_after_seconds(headers.get("retry-after"))
    if retry_after is not None:
        waits.append(retry_after)
    return max(waits) if waits else None


def error_for(response: httpx.Response) -> Exception:
    """The one-line error for a refused request: retryable (throttled, 5xx) or not (token, permissions, input)."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    code = error.get("code")
    subcode = error.get("error_subcode")
    message = str(error.get("message", "")).splitlines()[0][:200] if error.get("message") else response.reason_phrase
    where = f"code {code}" + (f"/{subcode}" if subcode else "") if code is not None else f"HTTP {response.status_code}"
    if code in THROTTLING_CODES or response.status_code == 429:
        wait = _wait_from_usage(response.headers) or DEFAULT_THROTTLE_WAIT
        return RetryableSendError(
            f"Meta throttled the Custom Audience upload ({where}: {message}); retry in {wait:.0f}s", wait
        )
    if response.status_code >= 500 or code in TRANSIENT_CODES or error.get("is_transient"):
        return RetryableSendError(
            f"Meta answered HTTP {response.status_code} ({where}: {message}); retrying later",
            _wait_from_usage(response.headers),
        )
    if code in TOKEN_CODES or response.status_code == 401:
        return SendError(
            f"the Meta access token was refused ({where}: {message}); set a valid system user token "
            "with ads_management in the destination's access_token setting"
        )
    if code in PERMISSION_CODES or response.status_code == 403:
        return SendError(
            f"the Meta access token may not update this audience ({where}: {message}); give its system user the "
            "ads_management permission and access to the ad account that owns the audience"
        )
    return SendError(f"Meta refused the Custom Audience upload ({where}: {message})")


class FacebookSender:
    """The Facebook Custom Audiences sender: ``Sender(settings)`` with ``access_token``, ``audience_id`` and optionally
    ``api_version``, ``base_url`` (the sandbox's), ``timeout`` and ``estimated_num_total`` (the run's members)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        missing = [name for name in ("access_token", "audience_id") if not settings.get(name)]
        if missing:
            raise ConfigError(missing[0], "the facebook destination needs it; see docs/activation.md")
        self._token = str(settings["access_token"])
        self.audience_id = str(settings["audience_id"])
        if not self.audience_id.isdigit():
            raise ConfigError("audience_id", f"must be the Custom Audience's numeric id, not '{self.audience_id}'")
        self.api_version = str(settings.get("api_version") or DEFAULT_API_VERSION)
        base_url = str(settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{base_url}/{self.api_version}/{self.audience_id}/users"
        estimated = settings.get("estimated_num_total")
        self.estimated_num_total = int(estimated) if estimated else None
        self._client = client or httpx.Client(timeout=float(settings.get("timeout", 60.0)))
        self.sessions: dict[str, UploadSession] = {}
        self._sleep = sleep

    def __repr__(self) -> str:  # Never the token.
        return f"FacebookSender(audience_id={self.audience_id!r}, api_version={self.api_version!r})"

    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._upload("POST", deliveries)

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._upload("DELETE", deliveries)

    def _session(self, method: str) -> UploadSession:
        session = self.sessions.get(method)
        if session is None or session.closed:
            # Meta's session_id is a client-chosen 64-bit integer, unique per upload.
            session = UploadSession(session_id=secrets.randbits(62) + 1)
            self.sessions[method] = session
        return session

    def _upload(self, method: str, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        if len(deliveries) > MAX_ROWS_PER_REQUEST:
            raise SendError(f"{len(deliveries)} members in one request; Meta takes at most {MAX_ROWS_PER_REQUEST}")
        rows, matchable = payload_rows(members_table([delivery.columns for delivery in deliveries]))
        flags = matchable.to_pylist()
        results: list[MemberResult | None] = [
            None if ok else MemberResult(delivery.member_id, MemberOutcome.REJECTED, NO_IDENTIFIER)
            for delivery, ok in zip(deliveries, flags, strict=True)
        ]
        data = pc.filter(rows, matchable)
        if not len(data):
            return [result for result in results if result is not None]
        session = self._session(method)
        # With the run's total known, the batch that reaches it is the last; else close() ends the session.
        seen = session.members_seen + len(deliveries)
        last = self.estimated_num_total is not None and seen >= self.estimated_num_total
        answer = self._request(method, session, data, last=last)
        session.batches_sent += 1
        session.members_seen = seen
        session.last_row = data[-1].as_py()
        session.closed = last
        reference = f"session {session.session_id} batch {session.batches_sent}"
        invalid = int(answer.get("num_invalid_entries", 0) or 0)
        log_event(
            logger,
            "facebook_batch_sent",
            action="add" if method == "POST" else "remove",
            audience_id=self.audience_id,
            session_id=session.session_id,
            batch_seq=session.batches_sent,
            rows=len(data),
            num_received=answer.get("num_received"),
            num_invalid_entries=invalid,
        )
        return [
            result or MemberResult(delivery.member_id, MemberOutcome.ACCEPTED, provider_reference=reference)
            for delivery, result in zip(deliveries, results, strict=True)
        ]

    def _request(self, method: str, session: UploadSession, data: pa.Array, *, last: bool) -> dict[str, Any]:
        """One upload request of ``data`` (rows as JSON array text) in ``session``; the answer, or the mapped error."""
        session_field: dict[str, Any] = {
            "session_id": session.session_id,
            "batch_seq": session.batches_sent + 1,
            "last_batch_flag": last,
        }
        if self.estimated_num_total:
            session_field["estimated_num_total"] = self.estimated_num_total
        # A JSON body (the Graph API reads JSON request bodies as it reads form fields): the payload's rows are JSON
        # text already, and JSON is about half the size of the same rows form-encoded.
        body = f'{{"payload":{payload_json(data)},"session":{json.dumps(session_field)}}}'
        try:
            response = self._client.request(
                method,
                self.url,
                content=body.encode(),
                headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            )
        except httpx.TransportError as exc:
            raise RetryableSendError(f"could not reach Meta's Graph API at {self.url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise error_for(response)
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            raise RetryableSendError(f"Meta's answer from {self.url} was not JSON; retrying later") from None
        return answer

    def close(self) -> None:
        """Flag each open session's last batch (see the module's docstring), then release the connection."""
        try:
            for method, session in self.sessions.items():
                if session.closed or session.last_row is None:
                    continue
                try:
                    self._close_session(method, session)
                except (RetryableSendError, SendError) as exc:
                    # The members were accepted already; only the session's end is late. Meta times it out.
                    log_event(
                        logger,
                        "facebook_session_not_closed",
                        logging.WARNING,
                        audience_id=self.audience_id,
                        session_id=session.session_id,
                        error=str(exc),
                    )
        finally:
            self._client.close()

    def _close_session(self, method: str, session: UploadSession) -> None:
        """The flagged closing request, retried like a batch (the engine does not see it): a few attempts, each after
        the wait Meta asks for, up to ``CLOSE_MAX_WAIT`` seconds."""
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            try:
                self._request(method, session, pa.array([session.last_row or "[]"], pa.string()), last=True)
                session.batches_sent += 1
                session.closed = True
                return
            except RetryableSendError as exc:
                wait = exc.retry_after if exc.retry_after is not None else float(2**attempt)
                if attempt == CLOSE_ATTEMPTS or wait > CLOSE_MAX_WAIT:
                    raise
                self._sleep(wait)
