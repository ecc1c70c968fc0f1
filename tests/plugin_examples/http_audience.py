"""A small real HTTP destination for the delivery engine's tests: an audience API, its sandbox and its sender.

The API: ``POST /v1/audiences/{audience}/members/add`` and ``.../members/remove`` with ``{"members": [{"id",
"email"}]}`` and ``Authorization: Bearer TOKEN``; at most ``MAX_MEMBERS`` per request (413 beyond); answers 200 with
one result per member (``accepted`` with a ``reference``, or ``rejected`` with a ``reason``), 401 for a bad token,
429 with ``Retry-After`` (seconds) when throttled, 5xx during incidents. The sandbox keeps every request it saw
(arrival time, path, member ids, the status it answered) in ``app.state.requests``, so tests count from the
provider's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plugins.connectors.sandbox import COUNTED_FAULT_SETTINGS, Fault, SandboxOptions, SandboxServer
from plugins.core.http_headers import retry_after_seconds
from plugins.descriptors import Delivery, MemberOutcome, MemberResult, RetryableSendError, SendError

MAX_MEMBERS = 1000
DEFAULT_TOKEN = "test-token"


def create_sandbox(options: SandboxOptions | None = None, *, retry_after_seconds: float = 1.0) -> Starlette:
    """The audience API emulator; faults: the counted ones (429 with ``Retry-After: retry_after_seconds``, 5xx,
    503 outages, slow answers)."""
    options = options or SandboxOptions()
    options.faults.require_only("http-audience", COUNTED_FAULT_SETTINGS)
    token = options.credentials.get("token", DEFAULT_TOKEN)
    requests: list[dict[str, Any]] = []

    async def members(request: Request) -> JSONResponse:
        arrived = time.time()
        count = len(requests) + 1
        body = await request.json()
        entries = body.get("members") or []
        seen = {"at": arrived, "path": request.url.path, "ids": [m.get("id") for m in entries], "status": 0}
        requests.append(seen)

        def answer(status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
            seen["status"] = status
            return JSONResponse(dict(payload), status, headers=dict(headers or {}))

        if request.headers.get("authorization") != f"Bearer {token}":
            return answer(401, {"error": "invalid token"})
        fault = options.faults.counted_fault(count)
        if fault is Fault.RATE_LIMIT:
            return answer(429, {"error": "slow down"}, {"Retry-After": f"{retry_after_seconds:g}"})
        if fault is Fault.OUTAGE:
            return answer(503, {"error": "unavailable"}, {"Retry-After": f"{retry_after_seconds:g}"})
        if fault is Fault.SERVER_ERROR:
            return answer(options.faults.server_error_status or 500, {"error": "internal error"})
        if fault is Fault.SLOW:
            await asyncio.sleep(options.faults.slow_seconds)
        if len(entries) > MAX_MEMBERS:
            return answer(413, {"error": f"at most {MAX_MEMBERS} members per request"})
        results = []
        for index, member in enumerate(entries):
            if "@" not in str(member.get("email") or ""):
                results.append({"id": member.get("id"), "status": "rejected", "reason": "invalid email"})
            else:
                results.append({"id": member.get("id"), "status": "accepted", "reference": f"r{count}-{index}"})
        return answer(200, {"results": results})

    app = Starlette(
        routes=[
            Route("/v1/audiences/{audience}/members/add", members, methods=["POST"]),
            Route("/v1/audiences/{audience}/members/remove", members, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get("retry-after"))


class HttpAudienceSender:
    """Sends members to the audience API; settings: ``url``, ``audience_id``, ``token`` (secret)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.audience = str(settings["audience_id"])
        self.client = httpx.Client(
            base_url=str(settings["url"]),
            headers={"Authorization": f"Bearer {settings['token']}"},
            timeout=float(settings.get("timeout", 30)),
        )

    def _post(self, action: str, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        members = [{"id": d.member_id, "email": d.columns.get("email")} for d in deliveries]
        try:
            response = self.client.post(f"/v1/audiences/{self.audience}/members/{action}", json={"members": members})
        except httpx.TransportError as exc:
            raise RetryableSendError(f"audience API unreachable: {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableSendError(f"audience API answered {response.status_code}", _retry_after(response))
        if response.status_code != 200:
            raise SendError(f"audience API refused the request: {response.status_code} {response.text[:200]}")
        results = []
        for item in response.json()["results"]:
            if item["status"] == "accepted":
                results.append(MemberResult(item["id"], MemberOutcome.ACCEPTED, provider_reference=item["reference"]))
            else:
                results.append(MemberResult(item["id"], MemberOutcome.REJECTED, item.get("reason", "")))
        return results

    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._post("add", deliveries)

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._post("remove", deliveries)

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def serve_sandbox(options: SandboxOptions, host: str, port: int) -> Iterator[str]:
    """The same API as a server of its own (how a destination that does not speak HTTP, like SMTP, offers its
    sandbox: ``sandbox_server``)."""
    with SandboxServer(create_sandbox(options), host, port) as server:
        yield server.url
