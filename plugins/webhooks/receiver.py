"""The webhook receiver: verify, rate-limit, store durably, then acknowledge (Starlette on uvicorn).

``POST /webhooks/{tenant}/{provider}`` answers:
200 stored (or a duplicate of a stored event); 202 signed but unreadable or unstorable (the raw body went to the DLQ
as ``webhook_invalid``); 401 bad, missing or stale signature (nothing stored); 403 source address not allowed;
404 unknown tenant or provider; 408 body not received in time; 413 body over the limit; 429 tenant over its rate
(counted on verified requests only), or the source address over its rate of failed signatures (with Retry-After);
503 the log or the DLQ could not be written (the provider retries). ``GET /healthz``; ``GET /metrics`` (Prometheus).
Activation destinations add their own endpoints beside these (``ActivatorDescriptor.receiver_routes``: email's
``/unsubscribe/{tenant}/{token}``); they go through Starlette, never through the webhook path.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import gc
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from plugins.connectors.webhook_signing import (
    DEFAULT_DLQ_HEADERS,
    UnmappableWebhookError,
    WebhookHandler,
    WebhookSignatureError,
    colliding_tenants,
    secret_env_var,
    webhook_secrets,
)
from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType
from plugins.core.errors import ConfigError
from plugins.core.events import log_event
from plugins.core.storage import ObjectStore
from plugins.core.zones import Zone, resolve_zone_url
from plugins.webhooks.http_guard import (
    BODY_RECEIVED_EXTENSION,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    ConnectionLimits,
    guarded_protocol,
)
from plugins.webhooks.log import DURATION_BUCKETS, DurationHistogram, LogEntry, WebhookLog, unstorable_reason
from plugins.webhooks.ratelimit import TokenBucketLimiter

logger = logging.getLogger("cdp.webhooks")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RATE_PER_SECOND = 1000.0
DEFAULT_BURST = 2000
DEFAULT_COMPACT_INTERVAL_SECONDS = 300.0
DEFAULT_UNVERIFIED_RATE_PER_SECOND = 5.0
DEFAULT_UNVERIFIED_BURST = 50
DEFAULT_BODY_TIMEOUT_SECONDS = 10.0
DLQ_STREAM = "webhooks"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# How uvicorn must run the receiver: its lifespan starts and stops the log writer, and X-Forwarded-For is judged by
# the receiver's own trusted_proxies setting, never rewritten by uvicorn. WebhookReceiver.uvicorn_options() adds the
# connection limits (header size and time, connections).
UVICORN_OPTIONS: dict[str, Any] = {"lifespan": "on", "proxy_headers": False, "access_log": False}


def parse_networks(setting: str, values: Sequence[str]) -> list[Network]:
    """CIDR blocks (a bare address is a /32 or /128); a bad one fails naming the setting."""
    networks = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(setting, f"'{part.strip()}' is not an IP address or CIDR block") from exc
    return networks


def parse_allowlist(values: Sequence[str]) -> dict[str, list[Network]]:
    """``provider=CIDR[,CIDR...]`` entries into a per-provider allowlist."""
    allow: dict[str, list[Network]] = {}
    for value in values:
        provider, sep, cidrs = value.partition("=")
        if not sep or not provider.strip():
            raise ConfigError("allow", f"'{value}' is not PROVIDER=CIDR[,CIDR...] (e.g. stripe=3.18.12.63/32)")
        allow.setdefault(provider.strip(), []).extend(parse_networks("allow", [cidrs]))
    return allow


@dataclass(frozen=True)
class ReceiverSettings:
    """How the receiver behaves; every value has a ``cdp webhooks serve`` option."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rate_per_second: float = DEFAULT_RATE_PER_SECOND
    burst: int = DEFAULT_BURST
    allow: Mapping[str, Sequence[Network]] = field(default_factory=dict)
    trusted_proxies: Sequence[Network] = ()
    compact_interval_seconds: float = DEFAULT_COMPACT_INTERVAL_SECONDS
    dlq_url: str | None = None
    environ: Mapping[str, str] | None = None  # Where secrets are read; the process environment by default.
    # The tenants served; empty: any tenant with a secret. Names that share a secret variable are refused.
    tenants: Sequence[str] = ()
    # Failed signatures allowed per source address (token bucket); over it, that address gets 429 before its body
    # is read. Verified requests never spend from it, and unverified ones never spend from a tenant's rate.
    unverified_rate_per_second: float = DEFAULT_UNVERIFIED_RATE_PER_SECOND
    unverified_burst: int = DEFAULT_UNVERIFIED_BURST
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS  # Whole body within this, else 408.
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # Request line and headers, else 431.
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS  # All headers within this, else 408.
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # Open connections; a new one over it gets 503.

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ConfigError("max_body_bytes", f"must be at least 1, got {self.max_body_bytes}")
        if self.rate_per_second < 0:
            raise ConfigError("rate", f"must be 0 (no limit) or more, got {self.rate_per_second}")
        if self.burst < 1:
            raise ConfigError("burst", f"must be at least 1, got {self.burst}")
        if self.unverified_rate_per_second < 0:
            raise ConfigError("unverified_rate", f"must be 0 (no limit) or more, got {self.unverified_rate_per_second}")
        if self.unverified_burst < 1:
            raise ConfigError("unverified_burst", f"must be at least 1, got {self.unverified_burst}")
        if self.body_timeout_seconds <= 0:
            raise ConfigError("body_timeout", f"must be more than 0 seconds, got {self.body_timeout_seconds}")
        if self.header_timeout_seconds <= 0:
            raise ConfigError("header_timeout", f"must be more than 0 seconds, got {self.header_timeout_seconds}")
        if self.max_header_bytes < 1024:
            raise ConfigError("max_header_bytes", f"must be at least 1024, got {self.max_header_bytes}")
        if self.max_connections < 1:
            raise ConfigError("max_connections", f"must be at least 1, got {self.max_connections}")
        for tenant in self.tenants:
            if not _NAME_RE.fullmatch(tenant):
                raise ConfigError("tenant", f"{tenant!r} must be lower-case letters, digits, '_' or '-'")
        collisions = colliding_tenants(self.tenants)
        if collisions:
            names = " and ".join(" / ".join(group) for group in collisions.values())
            raise ConfigError("tenant", f"{names} would share one secret variable; rename one of them")


LATENCY_BUCKETS = DURATION_BUCKETS


class ReceiverMetrics(Collector):
    """The receiver's Prometheus metrics: plain counters, turned into metric families when ``/metrics`` is scraped.

    prometheus_client's metric objects take a lock on every update so that any thread may update them; the receiver
    updates its metrics only on its event loop, several times per request, so plain numbers are enough (and scrapes
    run on the same loop, so they never see a half-made update).
    """

    def __init__(self, log: WebhookLog) -> None:
        self._log = log
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()  # (provider, status)
        self.bytes: collections.Counter[str] = collections.Counter()  # provider
        self.signature_failures: collections.Counter[tuple[str, str]] = collections.Counter()  # (provider, reason)
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()  # (provider, outcome)
        self._latencies: dict[str, DurationHistogram] = {}  # By provider.
        self.gc_pauses: dict[int, DurationHistogram] = {}  # By generation.
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe_latency(self, provider: str, seconds: float) -> None:
        histogram = self._latencies.get(provider)
        if histogram is None:
            histogram = self._latencies[provider] = DurationHistogram()
        histogram.observe(seconds)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        histogram = self.gc_pauses.get(generation)
        if histogram is None:
            histogram = self.gc_pauses[generation] = DurationHistogram()
        histogram.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "cdp_webhook_requests", "Webhook requests by provider and status.", labels=["provider", "status"]
        )
        for (provider, status), count in sorted(self.requests.items()):
            requests.add_metric([provider, status], count)
        yield requests
        read = CounterMetricFamily("cdp_webhook_request_bytes", "Bytes of webhook bodies read.", labels=["provider"])
        for provider, count in sorted(self.bytes.items()):
            read.add_metric([provider], count)
        yield read
        latency = HistogramMetricFamily(
            "cdp_webhook_request_duration_seconds", "Time from request to response.", labels=["provider"]
        )
        for provider, histogram in sorted(self._latencies.items()):
            latency.add_metric([provider], histogram.cumulative(), histogram.sum)
        yield latency
        log_durations = HistogramMetricFamily(
            "cdp_webhook_log_seconds",
            "The log's own durations: sync (a group's wait for its fdatasync), roll (sealing a segment on the loop).",
            labels=["kind"],
        )
        log_histograms: dict[str, DurationHistogram] = getattr(
            self._log, "histograms", dict
        )()  # A log without its own durations has none.
        for kind, histogram in sorted(log_histograms.items()):
            log_durations.add_metric([kind], histogram.cumulative(), histogram.sum)
        yield log_durations
        pauses = HistogramMetricFamily(
            "cdp_webhook_gc_pause_seconds", "Garbage-collection pauses of the receiver process.", labels=["generation"]
        )
        for generation, histogram in sorted(self.gc_pauses.items()):
            pauses.add_metric([str(generation)], histogram.cumulative(), histogram.sum)
        yield pauses
        failures = CounterMetricFamily(
            "cdp_webhook_signature_failures", "Rejected signatures by reason.", labels=["provider", "reason"]
        )
        for (provider, reason), count in sorted(self.signature_failures.items()):
            failures.add_metric([provider, reason], count)
        yield failures
        events = CounterMetricFamily(
            "cdp_webhook_events",
            "Events by outcome (stored, duplicate, dead_lettered).",
            labels=["provider", "outcome"],
        )
        for (provider, outcome), count in sorted(self.events.items()):
            events.add_metric([provider, outcome], count)
        yield events
        yield GaugeMetricFamily(
            "cdp_webhook_log_queue_depth", "Append requests waiting for the next group commit.", self._log.queue_depth
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Rejected(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.headers = headers


class _ClientGone(Exception):
    """The sender disconnected before its body arrived: nobody is left to answer."""


JSON_CONTENT_TYPE = (b"content-type", b"application/json")


async def _respond(send: Send, status: int, payload: bytes, headers: Mapping[str, str] | None = None) -> None:
    raw_headers = [JSON_CONTENT_TYPE, (b"content-length", str(len(payload)).encode())]
    if headers:
        raw_headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class WebhookReceiver:
    """The receiver's state: handlers by provider, the log, the DLQ store, limits and metrics.

    It is itself the ASGI endpoint of ``POST /webhooks/{tenant}/{provider}`` (Starlette routes to it and runs its
    middleware around it): every webhook pays only for what the receiver needs, without a Request and Response
    object per call.
    """

    def __init__(
        self,
        log: WebhookLog,
        handlers: Mapping[str, WebhookHandler],
        settings: ReceiverSettings | None = None,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.log = log
        self.handlers = dict(handlers)
        self.settings = settings or ReceiverSettings()
        self.routes = list(routes)  # The activation destinations' endpoints (registered_routes).
        self.limiter = TokenBucketLimiter(self.settings.rate_per_second, self.settings.burst)
        self.unverified_limiter = TokenBucketLimiter(
            self.settings.unverified_rate_per_second, self.settings.unverified_burst
        )
        self.metrics = ReceiverMetrics(log)
        self.dlq_store = ObjectStore(resolve_zone_url(Zone.DLQ, self.settings.dlq_url), setting="dlq_url")
        self._environ = self.settings.environ if self.settings.environ is not None else os.environ
        self._secrets: dict[tuple[str, str], list[str]] = {}  # Known tenants only, so unknown names cannot grow it.
        self._tenants = frozenset(self.settings.tenants)
        self._variable_of: dict[tuple[str, str], str] = {}  # (tenant, provider): its secret variable.
        self._variable_tenant: dict[str, str] = {}  # Secret variable: the one tenant name it serves.

    # -- checks -----------------------------------------------------------------------------------------------
    def secrets(self, tenant: str, provider: str) -> list[str]:
        """The tenant's secrets for ``provider``, read from the environment once per known tenant and provider."""
        cached = self._secrets.get((tenant, provider))
        if cached is not None:
            return cached
        if provider not in self.handlers or not _NAME_RE.fullmatch(tenant):
            return []
        if self._tenants and tenant not in self._tenants:
            return []
        found = webhook_secrets(tenant, provider, self._environ)
        if found:
            self._secrets[(tenant, provider)] = found
            self._variable_of[(tenant, provider)] = secret_env_var(tenant, provider)
        return found

    def owns_secret(self, tenant: str, provider: str) -> bool:
        """Whether ``tenant`` is the one name its secret variable serves (the first to verify with it).

        ``acme-x`` and ``acme_x`` map to one variable; a request verified under one name must not be stored under the
        other too. ``--tenant`` settles it at start-up instead (colliding names are refused there).
        """
        variable = self._variable_of[(tenant, provider)]
        owner = self._variable_tenant.setdefault(variable, tenant)
        if owner == tenant:
            return True
        log_event(logger, "webhook_tenant_collision", logging.WARNING, tenant=tenant, served=owner, variable=variable)
        return False

    def client_address(self, scope: Scope, headers: Mapping[str, str]) -> str | None:
        """The sender's address: the peer, or from X-Forwarded-For when the peer is a trusted proxy."""
        client = scope.get("client")
        peer = str(client[0]) if client else None
        if peer is None or not self.settings.trusted_proxies:
            return peer
        chain = [peer]
        forwarded = headers.get("x-forwarded-for")
        if forwarded:
            chain = [part.strip() for part in forwarded.split(",") if part.strip()] + chain
        for address in reversed(chain):  # Walk back from the nearest hop; the first untrusted one is the client.
            if not self._in(address, self.settings.trusted_proxies):
                return address
        return chain[0]

    @staticmethod
    def _in(address: str, networks: Sequence[Network]) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    async def read_body(self, scope: Scope, receive: Receive, headers: Mapping[str, str]) -> bytes:
        """The whole body; 413 as soon as it is known to be over the limit (declared or streamed); 408 when it takes
        longer than the body timeout."""
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Rejected(413, f"body is over the limit of {limit} bytes")
        received = scope.get("extensions", {}).get(BODY_RECEIVED_EXTENSION)
        if received is not None and received["check"]():
            # The guarded server says the whole body is here (the usual case: it came with the headers), so reading
            # it cannot wait; a timeout per request was ~3% of the receiver's loop time (py-spy, sustained load).
            return await self._read_chunks(receive, limit)
        try:
            async with asyncio.timeout(self.settings.body_timeout_seconds):
                return await self._read_chunks(receive, limit)
        except TimeoutError:
            raise _Rejected(408, "the body did not arrive in time", {"Connection": "close"}) from None

    @staticmethod
    async def _read_chunks(receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Rejected(413, f"body is over the limit of {limit} bytes")
            if not message.get("more_body", False):
                if not chunks:
                    return bytes(chunk)
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    # -- endpoints --------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /webhooks/{tenant}/{provider}``."""
        started = time.perf_counter()
        path_params = scope["path_params"]
        provider = path_params["provider"]
        label = provider if provider in self.handlers else "unknown"
        try:
            status, payload = await self._receive(scope, receive, path_params["tenant"], provider)
            await _respond(send, status, orjson.dumps(payload))
        except _Rejected as rejected:
            status = rejected.status
            await _respond(send, status, orjson.dumps({"error": rejected.message}), rejected.headers)
        except _ClientGone:
            status = 499  # Counted as nginx does; no answer is sent.
        metrics = self.metrics
        metrics.requests[label, str(status)] += 1
        metrics.observe_latency(label, time.perf_counter() - started)

    async def _receive(self, scope: Scope, receive: Receive, tenant: str, provider: str) -> tuple[int, dict[str, Any]]:
        handler = self.handlers.get(provider)
        secrets = self.secrets(tenant, provider)
        if handler is None or not secrets:
            raise _Rejected(404, "no webhook endpoint for this tenant and provider")
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        address = self.client_address(scope, headers)
        allowed = self.settings.allow.get(provider)
        if allowed and (address is None or not self._in(address, allowed)):
            log_event(logger, "webhook_forbidden", logging.WARNING, tenant=tenant, provider=provider)
            raise _Rejected(403, "source address is not allowed for this provider")
        source = address or "unknown"
        retry_after = self.unverified_limiter.check(source)
        if retry_after:  # This address keeps failing verification: refused before its body costs anything.
            raise _Rejected(429, "too many unverified requests from this address", {"Retry-After": str(retry_after)})
        body = await self.read_body(scope, receive, headers)
        self.metrics.bytes[provider] += len(body)
        try:
            handler.verify(headers, body, secrets, time.time())
        except WebhookSignatureError as exc:
            self.unverified_limiter.acquire(source)
            self.metrics.signature_failures[provider, exc.reason] += 1
            log_event(
                logger, "webhook_signature_rejected", logging.WARNING, tenant=tenant, provider=provider,
                reason=exc.reason, detail=str(exc), bytes=len(body),
            )  # fmt: skip
            raise _Rejected(401, "signature verification failed") from exc
        if not self.owns_secret(tenant, provider):
            raise _Rejected(404, "no webhook endpoint for this tenant and provider")
        retry_after = self.limiter.acquire(tenant)  # Only verified requests spend the tenant's rate.
        if retry_after:
            raise _Rejected(429, "tenant is over its webhook rate", {"Retry-After": str(retry_after)})
        received_at = datetime.now(UTC)
        try:
            events = handler.map(headers, body, received_at)
            if not events:
                raise UnmappableWebhookError("the handler found no event in the body")
            received = received_at.isoformat()
            entries = [
                LogEntry(
                    tenant,
                    provider,
                    event.stream,
                    event.event_id,
                    event.topic,
                    received,
                    event.payload,
                    event.payload_json,
                )
                for event in events
            ]
            for entry in entries:  # Before the group commit: one unstorable event must not fail its whole group.
                reason = unstorable_reason(entry)
                if reason is not None:
                    raise UnmappableWebhookError(reason)
        except UnmappableWebhookError as exc:
            await self._dead_letter(handler, tenant, provider, headers, body, str(exc), received_at)
            return 202, {"status": "dead_lettered"}
        try:
            flags = await self.log.append(entries)
        except Exception as exc:
            log_event(logger, "webhook_log_failed", logging.ERROR, tenant=tenant, provider=provider, error=str(exc))
            raise _Rejected(503, "the event could not be stored; retry later", {"Retry-After": "5"}) from exc
        stored = sum(flags)
        duplicates = len(flags) - stored
        if stored:
            self.metrics.events[provider, "stored"] += stored
        if duplicates:
            self.metrics.events[provider, "duplicate"] += duplicates
        return 200, {"status": "stored" if stored else "duplicate", "stored": stored, "duplicates": duplicates}

    async def _dead_letter(
        self,
        handler: WebhookHandler,
        tenant: str,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        reason: str,
        received_at: datetime,
    ) -> None:
        # An allowlist per provider: any other header may carry a credential, whatever its name.
        allowed = getattr(handler, "dlq_headers", DEFAULT_DLQ_HEADERS)
        kept_headers = {name: value for name, value in headers.items() if name in allowed}
        context: dict[str, Any] = {"headers": kept_headers, "received_at": received_at.isoformat()}
        try:
            record: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            # Not text: the exact bytes are kept (no U+FFFD in place of what the provider sent).
            record = None
            context["body_base64"] = base64.b64encode(body).decode("ascii")
            reason = f"{reason} (the body is not UTF-8; its exact bytes are in context.body_base64)"
        letter = DeadLetter(
            error_type=ErrorType.WEBHOOK_INVALID,
            error_message=reason,
            stream=DLQ_STREAM,
            record=record,
            context=context,
            failed_at=received_at,
        )
        try:
            await run_in_threadpool(DeadLetterQueue(self.dlq_store, tenant=tenant, provider=provider).write, [letter])
        except Exception as exc:
            log_event(logger, "webhook_dlq_failed", logging.ERROR, tenant=tenant, provider=provider, error=str(exc))
            raise _Rejected(503, "the event could not be stored; retry later", {"Retry-After": "5"}) from exc
        self.metrics.events[provider, "dead_lettered"] += 1
        log_event(logger, "webhook_dead_lettered", logging.WARNING, tenant=tenant, provider=provider, reason=reason)

    async def healthz(self, request: Request) -> Response:
        """200 while events are acknowledged; 503 once the log has failed (a restart recovers it)."""
        failed = self.log.failed
        if failed is not None:
            return JSONResponse({"status": "failing", "error": str(failed)}, status_code=503)
        return JSONResponse({"status": "ok", "queue_depth": self.log.queue_depth})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def _compact_periodically(self) -> None:
        interval = self.settings.compact_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                result = await run_in_threadpool(self.log.compact)
                log_event(logger, "webhook_log_compacted", **result.as_dict())
            except Exception as exc:
                log_event(logger, "webhook_log_compaction_failed", logging.ERROR, error=str(exc))

    def _time_collections(self, phase: str, info: dict[str, int]) -> None:
        """A gc callback: each collection's pause, by generation (a full collection can be a request's whole p99)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.metrics.observe_gc_pause(info["generation"], time.perf_counter() - self._gc_started)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.log.start_writer()
        compactor = None
        if self.settings.compact_interval_seconds > 0:
            compactor = asyncio.create_task(self._compact_periodically())
        self._gc_started = time.perf_counter()
        gc.callbacks.append(self._time_collections)
        try:
            yield
        finally:
            gc.callbacks.remove(self._time_collections)
            if compactor is not None:
                compactor.cancel()
            self.log.close()

    def uvicorn_options(self) -> dict[str, Any]:
        """How uvicorn must run this receiver: :data:`UVICORN_OPTIONS` and its connection limits."""
        limits = ConnectionLimits(
            max_header_bytes=self.settings.max_header_bytes,
            header_timeout_seconds=self.settings.header_timeout_seconds,
            max_connections=self.settings.max_connections,
        )
        return {**UVICORN_OPTIONS, "http": guarded_protocol(limits)}

    def app(self) -> ASGIApp:
        starlette = Starlette(
            routes=[
                Route("/webhooks/{tenant}/{provider}", self, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                *self.routes,
            ],
            lifespan=self.lifespan,
        )
        return _WebhooksFirst(self, starlette)


class _WebhooksFirst:
    """The receiver's ASGI app: a webhook (``POST /webhooks/{tenant}/{provider}``) goes straight to the receiver,
    everything else (other paths and methods, the lifespan) to the Starlette app, which routes the webhook path too.

    Starlette's routing and middleware around each webhook were about a tenth of the receiver's event-loop time under
    sustained load (py-spy, ``benchmarks/webhook_load.py --sustained``), and the webhook needs neither: the receiver
    answers its own errors, and uvicorn answers 500 to anything unexpected, as Starlette's ServerErrorMiddleware would.
    """

    def __init__(self, receiver: WebhookReceiver, starlette: Starlette) -> None:
        self.receiver = receiver
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            # The same paths as the route's pattern: /webhooks/ and two non-empty parts without a slash.
            parts = scope["path"].split("/")
            if len(parts) == 4 and parts[1] == "webhooks" and not parts[0] and parts[2] and parts[3]:
                scope["path_params"] = {"tenant": parts[2], "provider": parts[3]}
                await self.receiver(scope, receive, send)
                return
        await self.starlette(scope, receive, send)


def registered_handlers() -> dict[str, WebhookHandler]:
    """Every webhook handler the ``cdp_sources`` plugins provide, by provider name."""
    from plugins.manager import sources

    return {
        name: source.load_webhook_handler() for name, source in sources().items() if source.webhook_handler is not None
    }


def registered_routes(settings: ReceiverSettings | None = None) -> list[BaseRoute]:
    """The endpoints the ``cdp_activators`` plugins add to the receiver (email's one-click unsubscribe), built with
    the receiver's environment and tenants."""
    from plugins.manager import activators

    settings = settings or ReceiverSettings()
    environ = settings.environ if settings.environ is not None else os.environ
    routes: list[BaseRoute] = []
    for activator in activators().values():
        factory = activator.load_receiver_routes()
        if factory is not None:
            routes.extend(factory(environ, settings.tenants))
    return routes


def create_app(
    log: WebhookLog, handlers: Mapping[str, WebhookHandler] | None = None, settings: ReceiverSettings | None = None
) -> ASGIApp:
    """The receiver's ASGI app (handlers and activation endpoints from the plugins unless handlers are given)."""
    if handlers is None:
        return WebhookReceiver(log, registered_handlers(), settings, registered_routes(settings)).app()
    return WebhookReceiver(log, handlers, settings).app()
