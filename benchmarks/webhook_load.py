"""Load generator for the webhook receiver: signed Stripe-style events with durable acknowledgement, against bare
endpoints that only read the body, in the same run. Loopback only; bounded in count and time.

    .venv/bin/python benchmarks/webhook_load.py --count 60000 --duration 5 --rounds 3 --connections 32
    .venv/bin/python benchmarks/webhook_load.py --sustained     # one 60-second round per server, distinct events

``--sustained`` runs each server for 60 s (one round unless ``--rounds`` says more); events are then signed as they are
sent (the same cost for every server) instead of ahead of time, since a minute of them does not fit in memory. It also
prints the durable receiver's p99 per 5-second window, and the receiver's own histograms from ``/metrics`` (group
sync latency, segment rolls, garbage-collection pauses), to show where a tail comes from.

Three servers, each in its own process on uvicorn: the reference the goal is measured against, a bare Starlette
endpoint (``await request.body()``, a JSONResponse); a stricter one, a bare plain-ASGI endpoint inside Starlette (the
way the receiver's own endpoint is written); and ``cdp webhooks serve``. They run in turns, ``--rounds`` times, so a
noisy neighbour slows all of them alike; the ratio printed is the median of the per-round ratios. The client is a
minimal keep-alive HTTP/1.1 client on asyncio (uvloop when installed); events are signed before the clock starts.
Afterwards the receiver's log is read back: it must hold every event the receiver acknowledged, exactly once.
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
from urllib.parse import urlsplit

from plugins.connectors.testing import announced_url

HOST = "127.0.0.1"
SECRET = "whsec_benchmark"
BIN = Path(sys.executable).parent
DURABLE = "signed + durable (cdp)"


def serve_bare(port: int, kind: str) -> None:
    """A reference server on uvicorn that reads the body and answers 200, with the receiver's process tuning.

    ``starlette``: a Starlette endpoint (Request, JSONResponse), the reference of the goal. ``asgi``: a plain ASGI
    endpoint in a Starlette app, as the receiver's own endpoint is written.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    from plugins.cli.webhooks_cmd import tune_garbage_collection
    from plugins.connectors.sandbox import serve_forever

    async def receive(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "ok"})

    class ReceiveAsgi:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            more_body = True
            while more_body:
                message = await receive()
                more_body = message.get("more_body", False)
            body = b'{"status":"ok"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    endpoint = receive if kind == "starlette" else ReceiveAsgi()
    app = Starlette(
        routes=[Route("/webhooks/{tenant}/{provider}", endpoint, methods=["POST"]), Route("/healthz", healthz)]
    )

    def announce(url: str) -> None:
        print(f"bare {kind} server on {url}", flush=True)
        tune_garbage_collection()  # As `cdp webhooks serve` does, last thing before serving.

    serve_forever(app, HOST, port, announce, log_level="warning", access_log=False, lifespan="auto")


def check_healthy(port: int, timeout: float = 60) -> None:
    """One GET /healthz: the server printed its URL once its socket listened, so it answers once it has started."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        if not sock.recv(64).startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"server on port {port} is not healthy")


class SignedRequests:
    """``count`` distinct signed requests, each made when it is first asked for (a sustained run's worth of them does
    not fit in memory). Indexable like the list ``signed_requests`` returns."""

    def __init__(self, count: int, port: int, prefix: str) -> None:
        from plugins.connectors.webhook_signing import hmac_sha256

        self._count = count
        self._sign = hmac_sha256
        self._now = int(time.time())
        self._body = (
            f'{{"id": "{prefix}_%08d", "object": "event", "type": "payment_intent.succeeded", "created": {self._now}, '
            '"data": {"object": {"id": "pi_%08d", "amount": %d, "currency": "usd"}}}'
        )
        self._head = (
            f"POST /webhooks/bench/stripe HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            "Stripe-Signature: t=%d,v1=%s\r\nContent-Length: %d\r\n\r\n"
        )

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> bytes:
        body = (self._body % (index, index, 2000 + index % 500)).encode()
        signature = self._sign(SECRET, b"%d." % self._now + body).hex()
        return (self._head % (self._now, signature, len(body))).encode() + body


def signed_requests(count: int, port: int, prefix: str = "evt_bench") -> list[bytes]:
    from taps.stripe.webhook import StripeSignatureScheme

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
    finished: list[float]  # When each request was answered, seconds from the start of the run.
    server_cpu: float = float("nan")  # CPU seconds the server process and its children spent during the run.

    @property
    def cpu_per_request(self) -> float:
        """Microseconds of server CPU per answered request: the server's own cost, which a busy machine disturbs far
        less than the rate (it does not count time spent waiting for the CPU or the disk)."""
        return self.server_cpu / self.requests * 1e6 if self.requests else float("nan")

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


async def run_load(
    name: str, port: int, requests: list[bytes] | SignedRequests, connections: int, duration: float
) -> Result:
    latencies: list[float] = []
    finished: list[float] = []
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
                done = time.perf_counter()
                latencies.append(done - started)
                finished.append(done - run_started)
                if not 200 <= status < 300:
                    errors += 1
        finally:
            writer.close()

    run_started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return Result(name, len(latencies), errors, time.perf_counter() - run_started, latencies, finished)


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` and its child processes (the receiver's fsync helper), from
    /proc; NaN where there is no /proc."""
    total = 0.0
    try:
        pids = [pid]
        for task in os.listdir(f"/proc/{pid}/task"):
            pids += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        for each in pids:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime and stime, in clock ticks
    except (OSError, ValueError, IndexError):
        return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


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


def report(runs: list[Result]) -> None:
    """Median rate of the rounds; latency percentiles over every request of every round."""
    pooled = Result(runs[0].name, 0, 0, 0.0, [latency for run in runs for latency in run.latencies], [])
    rates = " ".join(f"{run.rate:.0f}" for run in runs)
    print(
        f"{runs[0].name:<28} {statistics.median(run.rate for run in runs):8.0f} req/s (rounds: {rates})  "
        f"p50 {pooled.percentile(0.50):6.2f} ms  p99 {pooled.percentile(0.99):6.2f} ms  "
        f"server CPU {statistics.median(run.cpu_per_request for run in runs):4.0f} us/req  "
        f"errors {sum(run.errors for run in runs)}"
    )


def report_windows(run: Result, window: float = 5.0) -> None:
    """p99 and rate per ``window`` seconds of one run: a tail that grows with time, or comes in bursts, shows here."""
    buckets: dict[int, list[float]] = {}
    for latency, finished in zip(run.latencies, run.finished, strict=True):
        buckets.setdefault(int(finished // window), []).append(latency)
    cells = []
    p99s = []
    for index in sorted(buckets):
        part = Result(run.name, 0, 0, 0.0, buckets[index], [])
        p99s.append(part.percentile(0.99))
        cells.append(f"{p99s[-1]:.1f}")
    print(
        f"  {run.name} p99 (ms) per {window:.0f} s: {' '.join(cells)}; median of windows {statistics.median(p99s):.1f}"
    )


def receiver_histograms(port: int) -> None:
    """The receiver's own view from /metrics, one line per histogram: group sync latency and segment rolls
    (``cdp_webhook_log_seconds``), collection pauses (``cdp_webhook_gc_pause_seconds``)."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    series: dict[str, list[tuple[str, float]]] = {}
    sums: dict[str, float] = {}
    for line in text.decode(errors="replace").splitlines():
        if not line.startswith(("cdp_webhook_log_seconds", "cdp_webhook_gc_pause_seconds")):
            continue
        name, _, value = line.rpartition(" ")
        metric, _, labels = name.partition("{")
        label = (
            metric.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            + "{"
            + ",".join(part for part in labels.rstrip("}").split(",") if part and not part.startswith("le="))
            + "}"
        )
        if metric.endswith("_bucket"):
            series.setdefault(label, []).append((labels.split('le="')[1].split('"')[0], float(value)))
        elif metric.endswith("_sum"):
            sums[label] = float(value)
    for label, buckets in series.items():
        total = buckets[-1][1]
        mean = sums.get(label, 0.0) / total * 1000 if total else 0.0
        shown = " ".join(f"<={float(le) * 1000:g}ms:{count:.0f}" for le, count in buckets if le != "+Inf")
        print(f"  {label} count {total:.0f} mean {mean:.2f} ms; cumulative {shown}")


def durable_acknowledged(folder: str) -> tuple[int, int]:
    """Events in the receiver's log, and how many distinct ones."""
    from plugins.webhooks.file_log import FileWebhookLog

    ids = [stored.entry.event_id for stored in FileWebhookLog(folder).read("bench", "stripe", "events")]
    return len(ids), len(set(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60_000, help="Requests per server and round at most.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per server and round at most.")
    parser.add_argument("--rounds", type=int, default=3, help="Turns each server gets.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent keep-alive connections.")
    parser.add_argument("--warmup", type=int, default=1000, help="Requests sent to each server before measuring.")
    parser.add_argument(
        "--sustained", action="store_true", help="60 s per server and round, events signed as they are sent."
    )
    parser.add_argument(
        "--log-dir",
        help="Where the receiver's log lives (default a temporary folder on /tmp's disk). A tmpfs such as /dev/shm "
        "takes the disk out of the measurement: what remains is the receiver's own cost (a diagnosis, not the goal).",
    )
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="starlette", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.kind)
        return
    with contextlib.suppress(ImportError):  # uvloop makes the client cheaper; plain asyncio works too.
        import uvloop

        uvloop.install()
    sustained = args.sustained
    count = 5_000_000 if sustained else min(args.count, 1_000_000)
    duration = 60.0 if sustained else min(args.duration, 60.0)
    rounds = max(1, min(args.rounds if not sustained or "--rounds" in sys.argv else 1, 10))
    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(dir=args.log_dir) as folder, contextlib.ExitStack() as stack:
        fsync = fdatasync_p50(folder)
        env = {**os.environ, "CDP_WEBHOOK_SECRET__BENCH__STRIPE": SECRET}
        servers = {
            "bare starlette (body only)": [sys.executable, __file__, "--serve-bare", "0", "--kind", "starlette"],
            "bare asgi (body only)": [sys.executable, __file__, "--serve-bare", "0", "--kind", "asgi"],
            DURABLE: [
                str(BIN / "cdp"), "webhooks", "serve", "--port", "0", "--log-url", f"{folder}/log",
                "--dlq-url", f"{folder}/dlq", "--rate", "0", "--compact-interval", "0",
            ],
        }  # fmt: skip
        ports: dict[str, int] = {}
        processes: dict[str, subprocess.Popen[bytes]] = {}
        outputs: dict[str, Path] = {}
        for index, (name, command) in enumerate(servers.items()):
            outputs[name] = Path(folder) / f"server-{index}.out"  # Each prints the URL it bound (port 0).
            with outputs[name].open("wb") as stdout:
                process = subprocess.Popen(command, env=env, stdout=stdout)
            stack.callback(process.wait, 10)
            stack.callback(process.terminate)
            processes[name] = process
        acknowledged = 0
        for name, process in processes.items():
            ports[name] = port = urlsplit(announced_url(process, outputs[name], timeout=60)).port or 0
            check_healthy(port)
            warmup = asyncio.run(run_load(name, port, signed_requests(args.warmup, port, "evt_warmup"), 8, 10))
            acknowledged += warmup.requests - warmup.errors if name == DURABLE else 0
        for round_index in range(rounds):
            for name, port in ports.items():
                prefix = f"evt_bench_{round_index}"
                requests = SignedRequests(count, port, prefix) if sustained else signed_requests(count, port, prefix)
                cpu_before = process_cpu_seconds(processes[name].pid)
                result = asyncio.run(run_load(name, port, requests, args.connections, duration))
                result.server_cpu = process_cpu_seconds(processes[name].pid) - cpu_before
                results.setdefault(name, []).append(result)
                acknowledged += result.requests - result.errors if name == DURABLE else 0
        if sustained:
            receiver_histograms(ports[DURABLE])
        processes[DURABLE].terminate()
        processes[DURABLE].wait(10)
        stored, distinct = durable_acknowledged(f"{folder}/log")
    print(
        f"{rounds} rounds; per server and round at most {count} requests and {duration:.0f} s; "
        f"{args.connections} connections, loopback, {os.cpu_count()} CPUs"
    )
    for runs in results.values():
        report(runs)
        if sustained:
            for run in runs:
                report_windows(run)
    print(f"fdatasync p50 on the log disk: {fsync * 1000:.2f} ms")
    durable = results[DURABLE]
    for reference in ("bare starlette (body only)", "bare asgi (body only)"):
        ratios = [mine.rate / theirs.rate for mine, theirs in zip(durable, results[reference], strict=True)]
        print(f"ratio signed+durable / {reference}: median {statistics.median(ratios):.2f}, per round "
              + " ".join(f"{ratio:.2f}" for ratio in ratios))  # fmt: skip
    print("goal: ratio to bare starlette >= 0.5 with p99 < 20 ms")
    verdict = "every acknowledged event is in the log once" if stored == distinct == acknowledged else "MISMATCH"
    print(f"log check: {acknowledged} acknowledged, {stored} stored, {distinct} distinct: {verdict}")
    if stored != distinct or distinct != acknowledged:
        sys.exit(1)


if __name__ == "__main__":
    main()
