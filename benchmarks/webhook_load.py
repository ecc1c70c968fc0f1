"""Load generator for the webhook receiver: signed Stripe-style events with durable acknowledgement, against a bare
Starlette endpoint on uvicorn that only reads the body, in the same run. Loopback only; bounded in count and time.

    .venv/bin/python benchmarks/webhook_load.py --count 20000 --duration 20 --connections 32

Each server runs in its own process; the client is a minimal keep-alive HTTP/1.1 client on asyncio (uvloop when
installed) so that it is not the bottleneck. Events are signed before the clock starts. Prints requests/s and
p50/p99 latency for both, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
SECRET = "whsec_benchmark"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve_bare(port: int) -> None:
    """The baseline: Starlette on uvicorn, reading the body and answering 200."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "ok"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route("/webhooks/{tenant}/{provider}", receive, methods=["POST"]), Route("/healthz", healthz)]
    )
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1) as sock:  # not up yet
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def signed_requests(count: int, port: int, prefix: str = "evt_bench") -> list[bytes]:
    from plugins.webhook_signing import StripeSignatureScheme

    scheme = StripeSignatureScheme()
    now = int(time.time())
    requests = []
    for index in range(count):
        body = json.dumps(
            {
                "id": f"{prefix}_{index:08d}",
                "object": "event",
                "type": "payment_intent.succeeded",
                "created": now,
                "data": {"object": {"id": f"pi_{index:08d}", "amount": 2000 + index % 500, "currency": "usd"}},
            }
        ).encode()
        head = (
            f"POST /webhooks/bench/stripe HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {scheme.sign(body, SECRET, now)}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else float("nan")


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run_load(name: str, port: int, requests: list[bytes], connections: int, duration: float) -> Result:
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + duration

    async def connection() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while next_index < len(requests) and time.perf_counter() < deadline:
                request = requests[next_index]
                next_index += 1
                started = time.perf_counter()
                writer.write(request)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return Result(name, len(latencies), errors, time.perf_counter() - started, latencies)


def fdatasync_p50(folder: str, samples: int = 50) -> float:
    """Median seconds of one append + fdatasync in ``folder``: the floor of a durable acknowledgement."""
    path = os.path.join(folder, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    timings = []
    try:
        for _ in range(samples):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            timings.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(timings)


def report(result: Result) -> None:
    print(
        f"{result.name:<28} {result.requests:>7} req in {result.seconds:5.1f} s  {result.rate:8.0f} req/s  "
        f"p50 {result.percentile(0.50):6.2f} ms  p99 {result.percentile(0.99):6.2f} ms  errors {result.errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="Requests per server at most.")
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds per server at most.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent keep-alive connections.")
    parser.add_argument("--warmup", type=int, default=500, help="Requests sent before measuring.")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    with contextlib.suppress(ImportError):  # uvloop makes the client cheaper; plain asyncio works too.
        import uvloop

        uvloop.install()
    count = min(args.count, 1_000_000)
    duration = min(args.duration, 120.0)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        fsync = fdatasync_p50(folder)
        env = {**os.environ, "CDP_WEBHOOK_SECRET__BENCH__STRIPE": SECRET}
        servers = {
            "bare starlette (body only)": [sys.executable, __file__, "--serve-bare", "{port}"],
            "signed + durable (cdp)": [
                str(BIN / "cdp"), "webhooks", "serve", "--port", "{port}", "--log-url", f"{folder}/log",
                "--dlq-url", f"{folder}/dlq", "--rate", "0", "--compact-interval", "0",
            ],
        }  # fmt: skip
        for name, command in servers.items():
            port = free_port()
            process = subprocess.Popen(
                [part.replace("{port}", str(port)) for part in command], env=env, stdout=subprocess.DEVNULL
            )
            try:
                wait_ready(port, process)
                warmup = signed_requests(args.warmup, port, prefix="evt_warmup")
                asyncio.run(run_load(name, port, warmup, 8, 10))
                requests = signed_requests(count, port)
                results.append(asyncio.run(run_load(name, port, requests, args.connections, duration)))
            finally:
                process.terminate()
                process.wait(10)
    print(
        f"{count} requests max, {duration:.0f} s max, {args.connections} connections, loopback, {os.cpu_count()} CPUs"
    )
    for result in results:
        report(result)
    bare, durable = results
    ceiling = args.connections / 2 / fsync  # Groups alternate: half the connections wait behind each fsync.
    print(
        f"fdatasync p50 on the log disk: {fsync * 1000:.2f} ms "
        f"(durable ceiling ~{ceiling:.0f} req/s at this concurrency)"
    )
    print(f"ratio signed+durable / bare: {durable.rate / bare.rate:.2f} (goal >= 0.5; p99 goal < 20 ms)")
    if durable.errors:
        print(f"warning: {durable.errors} non-2xx answers from the receiver")


if __name__ == "__main__":
    main()
