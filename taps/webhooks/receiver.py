"""The webhook receiver: verify, rate-limit, store durably, then acknowledge (Starlette on uvicorn).

``POST /webhooks/{tenant}/{provider}`` answers:
200 stored (or a duplicate of a stored event); 202 signed but unreadable (the raw body went to the DLQ as
``webhook_invalid``); 401 bad, missing or stale signature (nothing stored); 403 source address not allowed;
404 unknown tenant or provider; 413 body over the limit; 429 tenant over its rate (with Retry-After);
503 the log or the DLQ could not be written (the provider retries). ``GET /healthz``; ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.dlq import DeadLetter, DeadLetterQueue, ErrorType
from plugins.errors import ConfigError
from plugins.events import log_event
from plugins.storage import ObjectStore
from plugins.webhook_signing import UnmappableWebhookError, WebhookHandler, WebhookSignatureError, webhook_secrets
from plugins.zones import Zone, resolve_zone_url
from taps.webhooks.log import LogEntry, WebhookLog
from taps.webhooks.ratelimit import TokenBucketLimiter

logger = logging.getLogger("cdp.webhooks")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RATE_PER_SECOND = 1000.0
DEFAULT_BURST = 2000
DEFAULT_COMPACT_INTERVAL_SECONDS = 300.0
DLQ_STREAM = "webhooks"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PRIVATE_HEADER_WORDS = ("signature", "hmac", "authorization", "cookie", "token", "secret")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# How uvicorn must run the receiver: its lifespan starts and stops the log writer, and X-Forwarded-For is judged by
# the receiver's own trusted_proxies setting, never rewritten by uvicorn.
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

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ConfigError("max_body_bytes", f"must be at least 1, got {self.max_body_bytes}")
        if self.rate_per_second < 0:
            raise ConfigError("rate", f"must be 0 (no limit) or more, got {self.rate_per_second}")
        if self.burst < 1:
            raise ConfigError("burst", f"must be at least 1, got {self.burst}")


class ReceiverMetrics:
    """The receiver's Prometheus metrics, in their own registry."""

    def __init__(self, log: WebhookLog) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cdp_webhook_requests", "Webhook requests by provider and status.", ["provider", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.bytes = Counter(
            "cdp_webhook_request_bytes", "Bytes of webhook bodies read.", ["provider"], registry=self.registry
        )
        self.latency = Histogram(
            "cdp_webhook_request_duration_seconds",
            "Time from request to response.",
            ["provider"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.signature_failures = Counter(
            "cdp_webhook_signature_failures", "Rejected signatures by reason.", ["provider", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self.events = Counter(
            "cdp_webhook_events", "Events by outcome (stored, duplicate, dead_lettered).", ["provider", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "cdp_webhook_log_queue_depth", "Append requests waiting for the next group commit.", registry=self.registry
        )
        self.queue_depth.set_function(lambda: float(log.queue_depth))


class _Rejected(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.headers = headers


class WebhookReceiver:
    """The receiver's state: handlers by provider, the log, the DLQ store, limits and metrics."""

    def __init__(
        self, log: WebhookLog, handlers: Mapping[str, WebhookHandler], settings: ReceiverSettings | None = None
    ) -> None:
        self.log = log
        self.handlers = dict(handlers)
        self.settings = settings or ReceiverSettings()
        self.limiter = TokenBucketLimiter(self.settings.rate_per_second, self.settings.burst)
        self.metrics = ReceiverMetrics(log)
        self.dlq_store = ObjectStore(resolve_zone_url(Zone.DLQ, self.settings.dlq_url), setting="dlq_url")
        self._environ = self.settings.environ if self.settings.environ is not None else os.environ
        self._secrets: dict[tuple[str, str], list[str]] = {}  # Known tenants only, so unknown names cannot grow it.
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- checks -----------------------------------------------------------------------------------------------
    def secrets(self, tenant: str, provider: str) -> list[str]:
        """The tenant's secrets for ``provider``, read from the environment once per known tenant and provider."""
        cached = self._secrets.get((tenant, provider))
        if cached is not None:
            return cached
        if provider not in self.handlers or not _NAME_RE.match(tenant):
            return []
        found = webhook_secrets(tenant, provider, self._environ)
        if found:
            self._secrets[(tenant, provider)] = found
        return found

    def client_address(self, request: Request) -> str | None:
        """The sender's address: the peer, or from X-Forwarded-For when the peer is a trusted proxy."""
        peer = request.client.host if request.client else None
        if peer is None or not self.settings.trusted_proxies:
            return peer
        chain = [peer]
        forwarded = next(
            (value.decode("latin-1") for key, value in request.scope["headers"] if key == b"x-forwarded-for"), None
        )
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

    async def read_body(self, request: Request, headers: Mapping[str, str]) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Rejected(413, f"body is over the limit of {limit} bytes")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Rejected(413, f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- endpoints --------------------------------------------------------------------------------------------
    async def receive(self, request: Request) -> Response:
        started = time.perf_counter()
        tenant = request.path_params["tenant"]
        provider = request.path_params["provider"]
        label = provider if provider in self.handlers else "unknown"
        try:
            status, payload = await self._receive(request, tenant, provider)
            response: Response = Response(orjson.dumps(payload), status_code=status, media_type="application/json")
        except _Rejected as rejected:
            status = rejected.status
            response = JSONResponse({"error": rejected.message}, status_code=status, headers=rejected.headers)
        except ClientDisconnect:
            status = 499
            response = Response(status_code=400)
        self._child(self.metrics.requests, label, str(status)).inc()
        self._child(self.metrics.latency, label).observe(time.perf_counter() - started)
        return response

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: label values are bounded (known providers, HTTP statuses)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def _receive(self, request: Request, tenant: str, provider: str) -> tuple[int, dict[str, Any]]:
        handler = self.handlers.get(provider)
        secrets = self.secrets(tenant, provider)
        if handler is None or not secrets:
            raise _Rejected(404, "no webhook endpoint for this tenant and provider")
        allowed = self.settings.allow.get(provider)
        if allowed:
            address = self.client_address(request)
            if address is None or not self._in(address, allowed):
                log_event(logger, "webhook_forbidden", logging.WARNING, tenant=tenant, provider=provider)
                raise _Rejected(403, "source address is not allowed for this provider")
        retry_after = self.limiter.acquire(tenant)
        if retry_after:
            raise _Rejected(429, "tenant is over its webhook rate", {"Retry-After": str(retry_after)})
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in request.scope["headers"]}
        body = await self.read_body(request, headers)
        self._child(self.metrics.bytes, provider).inc(len(body))
        try:
            handler.verify(headers, body, secrets, time.time())
        except WebhookSignatureError as exc:
            self.metrics.signature_failures.labels(provider, exc.reason).inc()
            log_event(
                logger, "webhook_signature_rejected", logging.WARNING, tenant=tenant, provider=provider,
                reason=exc.reason, detail=str(exc), bytes=len(body),
            )  # fmt: skip
            raise _Rejected(401, "signature verification failed") from exc
        received_at = datetime.now(UTC)
        try:
            events = handler.map(headers, body, received_at)
            if not events:
                raise UnmappableWebhookError("the handler found no event in the body")
        except UnmappableWebhookError as exc:
            await self._dead_letter(tenant, provider, headers, body, str(exc), received_at)
            return 202, {"status": "dead_lettered"}
        entries = [
            LogEntry(
                tenant, provider, event.stream, event.event_id, event.topic, received_at.isoformat(), event.payload
            )
            for event in events
        ]
        try:
            flags = await self.log.append(entries)
        except Exception as exc:
            log_event(logger, "webhook_log_failed", logging.ERROR, tenant=tenant, provider=provider, error=str(exc))
            raise _Rejected(503, "the event could not be stored; retry later", {"Retry-After": "5"}) from exc
        stored = sum(flags)
        if stored:
            self._child(self.metrics.events, provider, "stored").inc(stored)
        if stored < len(flags):
            self._child(self.metrics.events, provider, "duplicate").inc(len(flags) - stored)
        return 200, {"status": "stored" if stored else "duplicate", "stored": stored, "duplicates": len(flags) - stored}

    async def _dead_letter(
        self, tenant: str, provider: str, headers: Mapping[str, str], body: bytes, reason: str, received_at: datetime
    ) -> None:
        kept_headers = {
            name: value for name, value in headers.items() if not any(word in name for word in _PRIVATE_HEADER_WORDS)
        }
        letter = DeadLetter(
            error_type=ErrorType.WEBHOOK_INVALID,
            error_message=reason,
            stream=DLQ_STREAM,
            record=body.decode("utf-8", errors="replace"),
            context={"headers": kept_headers, "received_at": received_at.isoformat()},
            failed_at=received_at,
        )
        try:
            await run_in_threadpool(DeadLetterQueue(self.dlq_store, tenant=tenant, provider=provider).write, [letter])
        except Exception as exc:
            log_event(logger, "webhook_dlq_failed", logging.ERROR, tenant=tenant, provider=provider, error=str(exc))
            raise _Rejected(503, "the event could not be stored; retry later", {"Retry-After": "5"}) from exc
        self.metrics.events.labels(provider, "dead_lettered").inc()
        log_event(logger, "webhook_dead_lettered", logging.WARNING, tenant=tenant, provider=provider, reason=reason)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "queue_depth": self.log.queue_depth})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _compact_periodically(self) -> None:
        interval = self.settings.compact_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                result = await run_in_threadpool(self.log.compact)
                log_event(logger, "webhook_log_compacted", **result.as_dict())
            except Exception as exc:
                log_event(logger, "webhook_log_compaction_failed", logging.ERROR, error=str(exc))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.log.start_writer()
        compactor = None
        if self.settings.compact_interval_seconds > 0:
            compactor = asyncio.create_task(self._compact_periodically())
        try:
            yield
        finally:
            if compactor is not None:
                compactor.cancel()
            self.log.close()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/webhooks/{tenant}/{provider}", self.receive, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            ],
            lifespan=self.lifespan,
        )


def registered_handlers() -> dict[str, WebhookHandler]:
    """Every webhook handler the ``cdp_sources`` plugins provide, by provider name."""
    from plugins.manager import sources

    return {name: source.webhook_handler for name, source in sources().items() if source.webhook_handler is not None}


def create_app(
    log: WebhookLog, handlers: Mapping[str, WebhookHandler] | None = None, settings: ReceiverSettings | None = None
) -> Starlette:
    """The receiver's ASGI app (handlers from the plugins unless given)."""
    return WebhookReceiver(log, registered_handlers() if handlers is None else handlers, settings).app()
