"""What every CDP tap shares: common settings, retries and throttling, redaction, the DLQ on failure, run budgets.

A tap subclasses :class:`CdpTap` and its streams subclass :class:`CdpRESTStream`::

    class TapX(CdpTap):
        config_jsonschema = th.PropertiesList(<provider settings>, *COMMON_TAP_SETTINGS).to_dict()

Requests (``CdpRESTStream``):
- 429 and provider throttle signals (:meth:`CdpRESTStream.throttle_delay`, by default ``Retry-After``) are retried up
  to ``throttle_max_retries`` times, waiting the provider's delay or exponential backoff with jitter;
- 5xx, connection errors and timeouts are retried ``max_retries`` (3) times with exponential backoff and jitter;
- 401/403 are ``auth_failed`` at once (a subclass may refresh credentials once: :meth:`CdpRESTStream.refresh_auth`);
- when retries run out, :class:`ExtractionFailure` describes the failed request without secrets.

Runs (``CdpTap.sync_all``): streams sync one by one; a stream that fails writes ONE dead letter (the failed request,
redacted, with stream, bookmark/window, attempts, status and error), gets its bookmark restored to where the run
found it, and the other streams go on; at the end the final STATE is written and :class:`StreamsFailedError` ends the
run (exit 1 from the command line, with a one-line summary). ``max_runtime_seconds`` stops a run cleanly between
pages: sorted streams keep their progress, the others keep their last checkpoint, and the run exits 0.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
import typing as t
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import requests
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError
from singer_sdk.plugin_base import JSONSchemaValidator
from singer_sdk.streams import RESTStream

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType
from plugins.core.errors import CdpError, ConfigError
from plugins.core.events import log_event
from plugins.core.http_headers import retry_after_seconds
from plugins.core.layout import NAME_PATTERN, validate_name
from plugins.core.redaction import REDACTED, is_secret_name, redact_params, redact_text, redact_url
from plugins.core.storage import ObjectStore
from plugins.core.zones import Zone, resolve_zone_url

if t.TYPE_CHECKING:
    from jsonschema import ValidationError
    from singer_sdk.helpers.types import Context

_TToken = t.TypeVar("_TToken")

COMMON_TAP_SETTINGS: list[th.Property[t.Any]] = [
    th.Property(
        "tenant",
        th.StringType(pattern=NAME_PATTERN),
        default="default",
        title="Tenant",
        description=(
            "The tenant this extraction belongs to; names the tap's DLQ folder ({dlq_url}/{tenant}/...). "
            "target-s3raw reads it from Meltano as $MELTANO_EXTRACT_TENANT."
        ),
    ),
    th.Property(
        "provider",
        th.StringType(pattern=NAME_PATTERN),
        title="Provider",
        description=(
            "The provider name in raw-zone and DLQ paths; default the tap's own (stripe for tap-stripe). "
            "target-s3raw reads it from Meltano as $MELTANO_EXTRACT_PROVIDER."
        ),
    ),
    th.Property(
        "dlq_url",
        th.StringType,
        title="DLQ URL",
        description=(
            "Where failed requests are written (local folder, file:// or s3://bucket/prefix); "
            f"default ${Zone.DLQ.env_var}, else {Zone.DLQ.default_url}."
        ),
    ),
    th.Property(
        "s3_endpoint_url",
        th.StringType,
        title="S3 endpoint URL",
        description="S3-compatible endpoint for an s3:// DLQ (MinIO, moto); default AWS.",
    ),
    th.Property(
        "max_runtime_seconds",
        th.IntegerType(exclusive_minimum=0),
        title="Maximum runtime (seconds)",
        description=(
            "Stop cleanly between pages once the run has lasted this long and emit the final STATE; the next run "
            "resumes from it. Unset: no limit."
        ),
    ),
]


#: The pattern of every base-URL setting (``api_url``, ``instance_url``, ``token_url``): an absolute http(s) URL.
HTTP_URL_PATTERN = r"^https?://[^/?#\s]+(/\S*)?(?!\n)$"


class ExtractionFailure(CdpError):
    """A request failed for good (after its retries): what failed, why, and how often it was tried."""

    def __init__(
        self,
        message: str,
        *,
        error_type: ErrorType = ErrorType.EXTRACTION_FAILED,
        request: dict[str, t.Any] | None = None,
        attempts: int = 1,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.request = request or {}
        self.attempts = attempts
        self.status = status


class StreamsFailedError(CdpError):
    """One or more streams failed; each has a DLQ entry and kept its bookmark. The other streams completed."""

    def __init__(self, failures: list[StreamFailure]) -> None:
        self.failures = failures
        summary = "; ".join(f"{f.stream}: {f.error_type.value} ({f.message})" for f in failures)
        super().__init__(f"{len(failures)} stream(s) failed, bookmarks kept, see the DLQ: {summary}")


class StateTenantMismatchError(CdpError):
    """The STATE handed to the tap was written for another tenant: its bookmarks would skip this tenant's history."""

    def __init__(self, state_tenant: str, tenant: str) -> None:
        self.state_tenant = state_tenant
        self.tenant = tenant
        super().__init__(
            f"the state was written for tenant '{state_tenant}', but this run extracts tenant '{tenant}'; give each "
            "tenant its own extractor (inherit_from, docs/taps.md) or reset this one's bookmarks with "
            "'meltano state clear <state id>'"
        )


def check_state_tenant(state: t.Mapping[str, t.Any], tenant: str, logger: logging.Logger) -> None:
    """Refuse a STATE written for another tenant (StateTenantMismatchError); a state without a tenant (written before
    the tenant was recorded) is taken as ``tenant``'s, with a warning. Every tap records its tenant beside its
    bookmarks (``state["tenant"]``) after loading a state."""
    written_for = state.get("tenant")
    if written_for is not None and str(written_for) != tenant:
        raise StateTenantMismatchError(str(written_for), tenant)
    if written_for is None and state.get("bookmarks"):
        log_event(logger, "tap.state_without_tenant", logging.WARNING, tenant=tenant)


class RunBudgetReached(Exception):  # A signal, not an error.
    """``max_runtime_seconds`` has passed: stop before the next page."""


@dataclass(frozen=True)
class StreamFailure:
    """One stream that failed in a run, as summarised at the end and written to the DLQ."""

    stream: str
    error_type: ErrorType
    message: str
    dlq_urls: list[str] = field(default_factory=list)


class CdpRESTStream(RESTStream[_TToken]):
    """A REST stream with the CDP's retry, throttling, redaction and run-budget behaviour.

    Tune in a subclass: ``max_retries`` (5xx/timeouts/connection errors), ``throttle_max_retries`` (429 and
    provider throttles), ``backoff_base_seconds``/``backoff_max_seconds`` (exponential backoff with jitter),
    ``max_retry_after_seconds`` (cap on a provider's requested delay), ``request_timeout_seconds``.
    Override :meth:`throttle_delay` for provider throttle signals, :meth:`pace_after_response` to slow down before a
    limit is hit (cost budgets, call-limit headers), :meth:`refresh_auth` to renew credentials after a 401.
    """

    max_retries: int = 3
    throttle_max_retries: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_retry_after_seconds: float = 120.0
    request_timeout_seconds: float = 60.0

    @property
    def timeout(self) -> int:
        return self.request_timeout_seconds  # type: ignore[return-value]  # requests accepts float timeouts

    @property
    def cdp_tap(self) -> CdpTap | None:
        """The running :class:`CdpTap` (None when a stream runs under another Tap class)."""
        tap = self._tap
        return tap if isinstance(tap, CdpTap) else None

    # -- provider hooks -----------------------------------------------------------------------------------------

    def throttle_delay(self, response: requests.Response) -> float | None:
        """If ``response`` says "slow down", how long to wait (0 = use exponential backoff); None if it does not.

        Default: HTTP 429, honouring ``Retry-After``. Providers that throttle differently (a 200 with a throttle
        error in the body, a 403 with a rate-limit code) override this.
        """
        if response.status_code == HTTPStatus.TOO_MANY_REQUESTS:
            return retry_after_seconds(response.headers.get("Retry-After")) or 0.0
        return None

    def pace_after_response(self, response: requests.Response) -> float:
        """Seconds to wait before the next request after a successful ``response`` (budgets, call-limit headers)."""
        return 0.0

    def refresh_auth(self) -> bool:
        """Renew credentials after a 401; return True to retry the request once. Default: nothing to renew."""
        return False

    def redact(self, text: str) -> str:
        """``text`` without this tap's secret setting values, bearer tokens or ``secret=...`` pairs."""
        tap = self.cdp_tap
        return redact_text(text, tap.secret_values() if tap is not None else ())

    # -- retries ------------------------------------------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter for the ``attempt``-th retry (1-based): base * 2^(n-1), +/- 50%."""
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return float(delay * random.uniform(0.5, 1.5))  # noqa: S311  # jitter, not cryptography

    def describe_request(self, request: requests.PreparedRequest) -> dict[str, t.Any]:
        """The request as a DLQ entry records it: method, redacted URL and params. Never headers or bodies."""
        url = request.url or ""
        return {
            "method": request.method,
            "url": redact_url(url),
            "params": redact_params(parse_qsl(urlsplit(url).query, True)),
        }

    def response_error_message(self, response: requests.Response) -> str:
        """``status reason for path: provider message`` without the URL's query string, headers or secrets."""
        path = urlsplit(response.url).path or self.path or ""
        detail = ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            error = body.get("error") or body.get("errors") or body.get("message")
            if isinstance(error, dict):
                error = error.get("message") or error.get("code")
            if error:
                detail = f": {str(error)[:300]}"
        return f"{response.status_code} {response.reason} for path {path}{detail}"

    def request_decorator(self, func: Callable[..., requests.Response]) -> Callable[..., requests.Response]:
        """Wrap the SDK's request with the CDP retry policy (see the class docstring)."""

        def send_with_retries(prepared_request: requests.PreparedRequest, context: Context | None) -> requests.Response:
            tap = self.cdp_tap
            if tap is not None:
                tap.check_run_budget()
            transient_retries = throttle_retries = 0
            refreshed = False
            attempts = 0
            while True:
                attempts += 1
                status: int | None = None
                response: requests.Response | None
                try:
                    response = func(prepared_request, context)
                except RetriableAPIError as exc:
                    response = exc.response
                    status = response.status_code if response is not None else None
                    error = self.redact(str(exc))
                except FatalAPIError as exc:
                    response = self._last_response
                    status = response.status_code if response is not None else None
                    error = self.redact(str(exc))
                except (requests.exceptions.Timeout, requests.exceptions.ConnectionError, ConnectionResetError) as exc:
                    response, error = None, self.redact(f"{type(exc).__name__}: {exc}")
                except requests.exceptions.RequestException as exc:  # ChunkedEncodingError, ContentDecodingError
                    response, error = None, f"{type(exc).__name__}"
                else:
                    assert response is not None
                    pause = self.pace_after_response(response)
                    if pause > 0:
                        log_event(self.logger, "tap.pace", stream=self.name, seconds=round(pause, 3))
                        time.sleep(pause)
                    return response

                described = self.describe_request(prepared_request)
                throttle = self.throttle_delay(response) if response is not None else None
                if throttle is not None:
                    throttle_retries += 1
                    if throttle_retries > self.throttle_max_retries:
                        raise ExtractionFailure(
                            f"throttled {attempts} times: {error}",
                            error_type=ErrorType.RATE_LIMIT_EXHAUSTED,
                            request=described,
                            attempts=attempts,
                            status=status,
                        )
                    wait = min(throttle, self.max_retry_after_seconds) or self.backoff_delay(throttle_retries)
                elif status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
                    if status == HTTPStatus.UNAUTHORIZED and not refreshed and self.refresh_auth():
                        refreshed = True
                        prepared_request = self._reauthorised(prepared_request)
                        log_event(self.logger, "tap.auth_refreshed", stream=self.name)
                        continue
                    raise ExtractionFailure(
                        f"credentials rejected: {error}",
                        error_type=ErrorType.AUTH_FAILED,
                        request=described,
                        attempts=attempts,
                        status=status,
                    )
                elif status is not None and HTTPStatus.BAD_REQUEST <= status < HTTPStatus.INTERNAL_SERVER_ERROR:
                    raise ExtractionFailure(
                        f"request rejected: {error}", request=described, attempts=attempts, status=status
                    )
                else:
                    transient_retries += 1
                    if transient_retries > self.max_retries:
                        raise ExtractionFailure(
                            f"failed after {attempts} attempts: {error}",
                            request=described,
                            attempts=attempts,
                            status=status,
                        )
                    wait = self.backoff_delay(transient_retries)
                log_event(
                    self.logger,
                    "tap.retry",
                    logging.WARNING,
                    stream=self.name,
                    url=described["url"],
                    status=status,
                    attempt=attempts,
                    wait_seconds=round(wait, 3),
                    error=error,
                )
                time.sleep(wait)

        return send_with_retries

    def send(self, method: str, url: str, context: Context | None = None, **kwargs: t.Any) -> requests.Response:
        """One request outside the stream's paginated pages (a count, a job, a follow-up query), with the same auth,
        headers, retries, throttling, pacing and run budget as the pages; ``kwargs`` are ``params``, ``json``..."""
        prepared = self.build_prepared_request(method=method, url=url, headers=self.http_headers, **kwargs)
        return self.request_decorator(self._request)(prepared, context)

    _last_response: requests.Response | None = None

    #: Whether a successful response must be a JSON document; a truncated or garbled page is retried like a 5xx.
    expect_json: bool = True

    def validate_response(self, response: requests.Response) -> None:
        self._last_response = response
        if self.throttle_delay(response) is not None:
            raise RetriableAPIError(self.response_error_message(response), response)
        super().validate_response(response)
        if self.expect_json and response.content:
            try:
                document = response.json()
            except ValueError:
                path = urlsplit(response.url).path
                raise RetriableAPIError(f"malformed JSON page from {path}", response) from None
            # Parse each page once: the records, the paginator and the stream all read this response's JSON.
            response.json = lambda **_: document  # type: ignore[method-assign]

    def _reauthorised(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """``request`` with its credentials from the (refreshed) authenticator."""
        request.headers.pop("Authorization", None)
        return request

    # -- run budget ---------------------------------------------------------------------------------------------

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        try:
            yield from super().get_records(context)
        except RunBudgetReached:
            self.stop_for_run_budget(context)

    def stop_for_run_budget(self, context: Context | None) -> None:
        """Leave resumable state when the run budget ends this stream mid-way.

        A sorted stream's bookmark is the last record emitted, so it stands. An unsorted stream's progress is not a
        valid bookmark until the stream completes: its progress markers are dropped, so its bookmark stays at its last
        :meth:`checkpoint` (or where the run found it).
        """
        if not self.is_sorted:
            state = self.get_context_state(context)
            state.pop("progress_markers", None)
        log_event(self.logger, "tap.run_budget_reached", stream=self.name)

    def checkpoint(self, value: t.Any, context: Context | None = None) -> None:
        """Record that everything up to replication value ``value`` is extracted, and emit STATE now.

        For streams the API cannot sort: sync in ascending windows of the replication key and checkpoint each
        window's end, so a crash or a run-budget stop resumes from the last complete window.
        """
        state = self.get_context_state(context)
        state["replication_key"] = self.replication_key
        current = state.get("replication_key_value")
        if current is None or value > current:
            state["replication_key_value"] = value
        markers = state.get("progress_markers")
        if isinstance(markers, dict) and markers.get("replication_key_value") is not None:
            markers["replication_key_value"] = max(markers["replication_key_value"], value)
        self.state_manager.is_flushed = False
        self._write_state_message()


class CdpTap(Tap):
    """A Singer tap whose failed streams go to the DLQ while the others complete, and whose runs can be budgeted."""

    #: The provider name in DLQ keys; default: the tap name without ``tap-``.
    provider: str | None = None
    #: What ``max_runtime_seconds`` is measured on; tests put ``staticmethod(FakeClock())`` here
    #: (plugins.connectors.testing).
    clock: t.ClassVar[staticmethod[[], float]] = staticmethod(time.monotonic)

    # Discovery may send requests during the SDK's __init__, before the run starts: no budget yet.
    _deadline: float | None = None

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: list[StreamFailure] = []
        self.stopped_by_budget = False
        self._check_names()

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """The SDK's validation against ``config_jsonschema`` (limits, patterns, defaults filled in), but a
        violation is a :class:`ConfigError`: one line naming the setting, never a secret's value."""
        schema = self.config_jsonschema
        self.append_builtin_config(schema)
        errors = sorted(JSONSchemaValidator(schema).iter_errors(self._config), key=lambda error: list(error.path))
        problems = [self._config_error(error) for error in errors]
        if problems and raise_errors:
            raise problems[0]
        return [str(problem) for problem in problems]

    def _config_error(self, error: ValidationError) -> ConfigError:
        """``error`` (from validating the config) as a :class:`ConfigError` naming the setting."""
        if error.validator == "required" and not error.path:
            missing = [name for name in error.validator_value if name not in error.instance]
            return ConfigError(missing[0] if missing else "?", "is required")
        setting, *inner = list(error.path)
        properties = self.config_jsonschema.get("properties", {})
        secret = bool(properties.get(setting, {}).get("secret")) or is_secret_name(str(setting))
        where = f"item {inner[0]}: " if inner else ""
        value = error.instance
        shown = REDACTED if secret else redact_url(value) if isinstance(value, str) and "://" in value else value
        if error.validator == "pattern":
            problem = f"{shown!r} does not match the pattern {error.validator_value}"
        elif secret:
            problem = f"the value fails the {error.validator} check ({error.validator_value})"
        elif isinstance(value, str) and "://" in value:
            problem = f"{shown!r} fails the {error.validator} check ({error.validator_value})"
        else:
            problem = error.message
        return ConfigError(str(setting), where + problem)

    def _check_names(self) -> None:
        """The name rules that ``config_jsonschema`` cannot express: tenant and provider name storage paths."""
        validate_name("tenant", self.tenant)
        validate_name("provider", self.provider_name)

    @property
    def tenant(self) -> str:
        """The ``tenant`` setting (``default`` when unset)."""
        return str(self.config.get("tenant") or "default")

    def load_state(self, state: dict[str, t.Any]) -> None:
        """Load bookmarks written for this tenant only, and record the tenant in every STATE this run emits.

        Bookmarks are kept per extractor by Meltano; if the extractor's ``tenant`` changes, the old tenant's
        bookmarks would skip the new tenant's history, so such a state is refused. A state without a tenant (written
        before the tenant was recorded) is taken as this tenant's.
        """
        check_state_tenant(state, self.tenant, self.logger)
        super().load_state(state)
        t.cast(dict[str, t.Any], self.state)["tenant"] = self.tenant  # STATE's top-level key beside "bookmarks"

    @property
    def provider_name(self) -> str:
        """The ``provider`` setting, else the class's ``provider``, else the tap name without ``tap-``."""
        return str(self.config.get("provider") or self.provider or self.name.removeprefix("tap-"))

    def secret_values(self) -> list[str]:
        """The values of settings declared ``secret=True`` (or named like secrets), to scrub from any text."""
        properties = self.config_jsonschema.get("properties", {})
        return [
            str(value)
            for name, value in self.config.items()
            if value and (properties.get(name, {}).get("secret") or is_secret_name(name))
        ]

    def check_run_budget(self) -> None:
        """Raise :class:`RunBudgetReached` once ``max_runtime_seconds`` has passed."""
        if self._deadline is not None and self.clock() >= self._deadline:
            self.stopped_by_budget = True
            raise RunBudgetReached

    def dead_letter_queue(self) -> DeadLetterQueue:
        store = ObjectStore(
            resolve_zone_url(Zone.DLQ, self.config.get("dlq_url")),
            s3_endpoint_url=self.config.get("s3_endpoint_url"),
            setting="dlq_url",
        )
        return DeadLetterQueue(store, tenant=self.tenant, provider=self.provider_name)

    def sync_all(self) -> None:  # type: ignore[misc]  # The SDK marks it final; this is its failure-tolerant twin.
        """Sync every selected stream; failures go to the DLQ (see the module docstring)."""
        self._reset_state_progress_markers()
        self._set_compatible_replication_methods()
        if self.state:
            self._state_writer.write_state(self.state)
        max_runtime = self.config.get("max_runtime_seconds")
        self._deadline = self.clock() + float(max_runtime) if max_runtime else None
        self.failures = []
        self.stopped_by_budget = False

        for stream in self.streams.values():
            if not stream.selected and not stream.has_selected_descendents:
                continue
            if stream.parent_stream_type:
                continue
            if self._deadline is not None and self.clock() >= self._deadline:
                self.stopped_by_budget = True
            if self.stopped_by_budget:
                log_event(self.logger, "tap.stream_deferred", stream=stream.name, reason="max_runtime_seconds")
                continue
            bookmarks = self.state.setdefault("bookmarks", {})
            before = copy.deepcopy(bookmarks.get(stream.tap_stream_id))
            try:
                stream.sync()
                stream.finalize_state_progress_markers()
            except Exception as exc:  # Any failure: DLQ it, keep the bookmark, go on.
                self._record_failure(stream, exc, before)

        for stream in self.streams.values():
            stream.log_sync_costs()
        if self.stopped_by_budget:
            log_event(self.logger, "tap.stopped", reason="max_runtime_seconds", max_runtime_seconds=max_runtime)
        if self.failures:
            raise StreamsFailedError(self.failures)

    def _record_failure(self, stream: t.Any, exc: Exception, before: dict[str, t.Any] | None) -> None:
        bookmarks = self.state.setdefault("bookmarks", {})
        current = bookmarks.get(stream.tap_stream_id)
        attempted = copy.deepcopy(current) if isinstance(current, dict) else None
        if isinstance(current, dict):
            current.clear()
            current.update(before or {})
        else:
            bookmarks[stream.tap_stream_id] = before or {}
        if not bookmarks[stream.tap_stream_id]:
            bookmarks.pop(stream.tap_stream_id)
        self._state_writer.write_state(self.state)

        if isinstance(exc, ExtractionFailure):
            error_type, request, attempts, status = exc.error_type, exc.request, exc.attempts, exc.status
        else:
            error_type, request, attempts, status = ErrorType.EXTRACTION_FAILED, {}, 1, None
        message = str(exc) if isinstance(exc, ExtractionFailure) else f"{type(exc).__name__}: {exc}"
        message = redact_text(message, self.secret_values())
        context = {
            "stream": stream.name,
            "bookmark": before,
            "window": getattr(stream, "current_window", None),
            "progress": attempted,
            "attempts": attempts,
            "status": status,
            "error": message,
        }
        letter = DeadLetter(
            error_type=error_type,
            error_message=message,
            stream=stream.name,
            record=request,
            retry_count=max(attempts - 1, 0),
            context=context,
        )
        urls = [batch.url for batch in self.dead_letter_queue().write([letter])]
        self.failures.append(StreamFailure(stream.name, error_type, message, urls))
        log_event(
            self.logger,
            "tap.stream_failed",
            logging.ERROR,
            stream=stream.name,
            error_type=error_type.value,
            attempts=attempts,
            status=status,
            error=message,
            dlq=urls,
        )

    @classmethod
    def invoke(cls, *args: t.Any, **kwargs: t.Any) -> None:
        """The command line: as the SDK's, but failed streams or bad settings end the run with one line and exit 1."""
        try:
            super().invoke(*args, **kwargs)
        except CdpError as exc:  # Failed streams (the DLQ has the details) or a bad setting: one line, no traceback.
            cls.logger.error("%s", exc)
            sys.stderr.flush()
            sys.exit(1)
