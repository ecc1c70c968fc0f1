"""Records/s of each tap (stripe, shopify, salesforce) against its local sandbox, with the sandbox's own cost and the
SDK's raw message-writing speed measured in the same run. Loopback only; every run is bounded in time.

    .venv/bin/python benchmarks/tap_throughput.py                         # 20,000 records per resource, 3 repeats
    .venv/bin/python benchmarks/tap_throughput.py --taps stripe --records 2000 --repeats 1
    .venv/bin/python benchmarks/tap_throughput.py --taps shopify --profile  # also cProfile one tap run
    .venv/bin/python benchmarks/tap_throughput.py --taps shopify,shopify-bulk  # Shopify paged against bulk operations

Per tap, the sandbox runs in its own process (SandboxServer, uvicorn) with ``--records`` synthetic records per
resource, serving the largest pages the provider allows (Stripe ``limit`` 100, Salesforce ``batchSize`` 2000, Shopify
pages as large as the tap's cost budget allows, max 250 nodes; the Shopify cost bucket is made unlimited so pacing does
not hide the tap's own cost). ``shopify`` pages every stream; ``shopify-bulk`` backfills the same store with one bulk
query operation per stream (polled every 0.05 s; the sandbox's bulk slots unlimited, so replays cannot hold one), and
the summary compares the two. Then:

- **tap**: the tap's console script runs as Meltano runs it (a full sync of every stream, stdout to /dev/null); the
  clock covers the whole process, start-up included. A first, untimed run records the HTTP requests it made and
  keeps its output (to count the records and to feed the SDK writer);
- **sandbox only**: the recorded requests are replayed with one keep-alive ``requests.Session`` (no JSON parsing),
  so this is what the sandbox and the HTTP round trips cost for the same pages (Salesforce query locators are per
  server and single use: ``nextRecordsUrl`` is followed from the replayed answers). Tap overhead = tap - sandbox;
- **SDK writer**: the tap class's own ``message_writer_class`` (singer-sdk's SingerWriter) writes the same records
  as RECORD messages (built as the SDK builds them) to /dev/null, in this process.

Each measurement is repeated ``--repeats`` times (interleaved) and the median is reported.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests
from singer_sdk.helpers._util import utc_now
from singer_sdk.singerlib import RecordMessage
from starlette.types import Message, Receive, Scope, Send

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the taps and plugins, when run as a script


HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
RECORDED_PATH = "/__benchmark__/recorded"  # served by the recorder below, never by a sandbox
HOP_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding", "transfer-encoding"})
NEXT_RECORDS_URL = re.compile(rb'"nextRecordsUrl":"([^"]+)"')
SALESFORCE_QUERY_MORE = re.compile(r"^/services/data/v[\d.]+/query/[^/]+$")


# -- the taps under test --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TapUnderTest:
    """How to build one provider's sandbox and point its tap at it."""

    name: str
    tap_class_path: str  # module:Class, for the SDK writer (its message_writer_class)
    build_sandbox: Callable[[int], Any]  # records per resource -> ASGI app
    config: Callable[[str, Path, int], dict[str, Any]]  # sandbox URL, work dir, records -> tap config
    default_records: int = 20_000  # per resource: runs of one to two minutes on 2 cores
    console_script: str = ""  # default tap-<name>

    @property
    def executable(self) -> Path:
        return BIN / (self.console_script or f"tap-{self.name}")

    def tap_class(self) -> Any:
        module, _, name = self.tap_class_path.partition(":")
        return getattr(__import__(module, fromlist=[name]), name)


def _stripe_sandbox(records: int) -> Any:
    from plugins.connectors.sandbox import SandboxOptions
    from taps.stripe.sandbox import create_sandbox

    return create_sandbox(SandboxOptions(records=records))


def _stripe_config(url: str, work: Path, records: int) -> dict[str, Any]:
    from taps.stripe.sandbox import DEFAULT_API_KEY

    return {"api_key": DEFAULT_API_KEY, "api_url": url, "dlq_url": str(work / "dlq"), "tenant": "bench"}


def _shopify_sandbox(records: int) -> Any:
    from plugins.connectors.sandbox import SandboxOptions
    from taps.shopify.sandbox import CostBucket, create_sandbox

    # Unlimited cost budget and bulk slots: the benchmark measures the tap, not the plan's restore rate (50-2000
    # points/s); a replayed bulkOperationRunQuery leaves an operation nobody polls, which must not hold the slot.
    bucket = CostBucket(maximum=1000.0, restore_rate=1e9)
    return create_sandbox(SandboxOptions(records=records), bucket=bucket, max_bulk_queries=1_000_000)


def _shopify_config(url: str, work: Path, records: int, *, bulk: bool = False) -> dict[str, Any]:
    from taps.shopify.sandbox import DEFAULT_ACCESS_TOKEN

    return {
        "shop": "cdp-sandbox",
        "access_token": DEFAULT_ACCESS_TOKEN,
        "api_url": url,
        "dlq_url": str(work / "dlq"),
        "tenant": "bench",
        "bulk_operations": bulk,
        "bulk_poll_interval_seconds": 0.05,
    }


def _shopify_bulk_config(url: str, work: Path, records: int) -> dict[str, Any]:
    return _shopify_config(url, work, records, bulk=True)


def _salesforce_sandbox(records: int) -> Any:
    from plugins.connectors.sandbox import SandboxOptions
    from taps.salesforce.sandbox import create_sandbox

    # The org's daily API allocation is generous so that repeated runs stay far below the tap's usage ceiling.
    return create_sandbox(SandboxOptions(records=records), api_daily_limit=10_000_000)


def _salesforce_config(url: str, work: Path, records: int) -> dict[str, Any]:
    from taps.salesforce.sandbox import DEFAULT_ACCESS_TOKEN, MAX_BATCH

    return {
        "access_token": DEFAULT_ACCESS_TOKEN,
        "instance_url": url,
        "page_size": MAX_BATCH,
        # The REST query path (Bulk API jobs poll on a timer, which would measure the poll interval).
        "bulk_threshold": max(records + 1, 50_000),
        "dlq_url": str(work / "dlq"),
        "tenant": "bench",
    }


TAPS: dict[str, TapUnderTest] = {
    tap.name: tap
    for tap in (
        TapUnderTest("stripe", "taps.stripe.tap:TapStripe", _stripe_sandbox, _stripe_config),
        # The GraphQL sandbox executes every query with graphql-core: 2,000 records per resource already take minutes.
        TapUnderTest("shopify", "taps.shopify.tap:TapShopify", _shopify_sandbox, _shopify_config, 2_000),
        TapUnderTest(
            "shopify-bulk", "taps.shopify.tap:TapShopify", _shopify_sandbox, _shopify_bulk_config, 2_000, "tap-shopify"
        ),
        TapUnderTest("salesforce", "taps.salesforce.tap:TapSalesforce", _salesforce_sandbox, _salesforce_config),
    )
}


# -- the sandbox process and its request recorder -------------------------------------------------------------------


class RequestRecorder:
    """ASGI middleware that keeps every request (method, path, query, headers, body) and its status until
    ``GET /__benchmark__/recorded`` hands them over (as JSON) and stops recording."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.recording = True
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == RECORDED_PATH:
            body = json.dumps(self.requests).encode()
            self.recording, self.requests = False, []
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if not self.recording:
            await self.app(scope, receive, send)
            return
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": "",
        }

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                entry["body"] += message.get("body", b"").decode("latin-1")
            return message

        async def send_and_keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive_and_keep, send_and_keep)
        self.requests.append(entry)


def serve_sandbox(provider: str, records: int, control: Connection) -> None:
    """The sandbox process: serve ``provider``'s sandbox (with the recorder) until told to stop."""
    from plugins.connectors.sandbox import SandboxServer

    app = RequestRecorder(TAPS[provider].build_sandbox(records))
    with SandboxServer(app, host=HOST) as server:
        control.send(server.url)
        control.recv()  # any message: stop


@dataclass(frozen=True)
class RunningSandbox:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the sandbox process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sandbox_process(provider: str, records: int, timeout: float) -> Iterator[RunningSandbox]:
    """Run ``provider``'s sandbox in its own process (so it never competes with this one for the GIL)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve_sandbox, args=(provider, records, theirs), daemon=True)
    process.start()
    try:
        if not ours.poll(timeout):
            raise TimeoutError(f"the {provider} sandbox did not start within {timeout:.0f} s")
        assert process.pid is not None
        yield RunningSandbox(str(ours.recv()), process.pid)
    finally:
        if process.is_alive():
            ours.send("stop")
            process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


# -- the three measurements ------------------------------------------------------------------------------------------


@dataclass
class TapResult:
    name: str
    per_resource: int
    records: int = 0
    streams: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    response_bytes: int = 0
    tap_seconds: list[float] = field(default_factory=list)  # wall clock, process start to exit
    tap_cpu_seconds: list[float] = field(default_factory=list)  # the tap process's own CPU time
    sandbox_cpu_during_tap: list[float] = field(default_factory=list)  # the sandbox's CPU time serving the tap
    sandbox_seconds: list[float] = field(default_factory=list)  # wall clock of the replay
    sandbox_cpu_seconds: list[float] = field(default_factory=list)  # the sandbox's CPU time serving the replay
    writer_seconds: list[float] = field(default_factory=list)  # wall clock of the SDK writer

    @staticmethod
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def rate(self, seconds: float) -> float:
        return self.records / seconds if seconds > 0 else float("inf")


def tap_environment(work: Path) -> dict[str, str]:
    """The tap's environment: byte-compiled modules cached (in ``work``, not the tree), as in any installed venv, so
    start-up does not recompile every module when PYTHONDONTWRITEBYTECODE is set."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    environment["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return environment


def run_tap(
    tap: TapUnderTest, config_path: Path, stdout: Any, stderr_path: Path, timeout: float
) -> tuple[float, float]:
    """One end-to-end run of the tap's console script: (seconds from spawn to exit, the tap's CPU seconds)."""
    with stderr_path.open("wb") as stderr:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        completed = subprocess.run(
            [str(tap.executable), "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=tap_environment(config_path.parent.parent),
            timeout=timeout,
            check=False,
        )
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # only the tap: the sandbox process is still running
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if completed.returncode != 0:
        tail = stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"tap-{tap.name} exited {completed.returncode}: " + " | ".join(tail))
    return seconds, cpu


def replay(url: str, recorded: list[dict[str, Any]], timeout: float) -> tuple[float, int]:
    """Fetch the recorded requests again, as plainly as possible; (seconds, response bytes)."""
    total_bytes = 0
    next_records_url: str | None = None
    with requests.Session() as session:
        started = time.perf_counter()
        for entry in recorded:
            path = entry["path"]
            if next_records_url and SALESFORCE_QUERY_MORE.match(path):
                target = url + next_records_url  # this server's locator for the same query
            else:
                target = url + path + (f"?{entry['query']}" if entry["query"] else "")
            headers = {k: v for k, v in entry["headers"] if k.lower() not in HOP_HEADERS}
            body = entry["body"].encode("latin-1") or None
            response = session.request(entry["method"], target, headers=headers, data=body, timeout=timeout)
            if response.status_code != entry.get("status", response.status_code):
                raise RuntimeError(f"replay of {entry['method']} {path}: {response.status_code}, not {entry['status']}")
            content = response.content
            total_bytes += len(content)
            found = NEXT_RECORDS_URL.search(content, 0, 512)
            next_records_url = found.group(1).decode() if found else None
        return time.perf_counter() - started, total_bytes


def read_messages(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], Counter[str]]:
    """The RECORD messages of a tap's output: (stream, record) pairs and the count per stream."""
    records: list[tuple[str, dict[str, Any]]] = []
    with path.open("rb") as lines:
        for line in lines:
            message = json.loads(line)
            if message.get("type") == "RECORD":
                records.append((message["stream"], message["record"]))
    return records, Counter(stream for stream, _ in records)


def time_sdk_writer(tap_class: Any, records: list[tuple[str, dict[str, Any]]]) -> float:
    """Seconds for the tap class's SDK message writer to write ``records`` as RECORD messages to /dev/null."""
    writer = tap_class.message_writer_class()
    with open(os.devnull, "w", encoding="utf-8") as devnull, redirect_stdout(devnull):
        started = time.perf_counter()
        for stream, record in records:
            writer.write_message(RecordMessage(stream=stream, record=record, time_extracted=utc_now()))
        return time.perf_counter() - started


def profile_tap(tap: TapUnderTest, config_path: Path, work: Path, timeout: float, top: int = 30) -> str:
    """One tap run under cProfile (stdout to /dev/null); the functions where the time goes."""
    out = work / f"{tap.name}.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(out), str(tap.executable), "--config", str(config_path)]
    subprocess.run(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=tap_environment(work.parent),
        timeout=timeout,
        check=True,
    )
    report = io.StringIO()
    stats = pstats.Stats(str(out), stream=report).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return report.getvalue()


def benchmark(tap: TapUnderTest, args: argparse.Namespace, work: Path) -> TapResult:
    records_per_resource = args.records or tap.default_records
    result = TapResult(tap.name, per_resource=records_per_resource)
    folder = work / tap.name
    folder.mkdir()
    started = time.perf_counter()
    with sandbox_process(tap.name, records_per_resource, timeout=args.timeout) as sandbox:
        url = sandbox.url
        print(f"[{tap.name}] sandbox ready in {time.perf_counter() - started:.1f} s on {url}", file=sys.stderr)
        config_path = folder / "config.json"
        config_path.write_text(json.dumps(tap.config(url, folder, records_per_resource)))

        # Untimed first run: records the requests, keeps the output, warms the caches.
        output = folder / "output.jsonl"
        with output.open("wb") as stdout:
            first, _ = run_tap(tap, config_path, stdout, folder / "stderr.log", args.timeout)
        recorded = requests.get(url + RECORDED_PATH, timeout=args.timeout).json()
        records, result.streams = read_messages(output)
        result.records, result.requests = len(records), len(recorded)
        print(
            f"[{tap.name}] first run: {result.records:,} records, {len(recorded)} requests, {first:.1f} s",
            file=sys.stderr,
        )

        tap_class = tap.tap_class()
        for repeat in range(args.repeats):
            sandbox_cpu = sandbox.cpu_seconds()
            seconds, cpu = run_tap(tap, config_path, subprocess.DEVNULL, folder / "stderr.log", args.timeout)
            result.tap_seconds.append(seconds)
            result.tap_cpu_seconds.append(cpu)
            result.sandbox_cpu_during_tap.append(sandbox.cpu_seconds() - sandbox_cpu)
            sandbox_cpu = sandbox.cpu_seconds()
            seconds, result.response_bytes = replay(url, recorded, args.timeout)
            result.sandbox_seconds.append(seconds)
            result.sandbox_cpu_seconds.append(sandbox.cpu_seconds() - sandbox_cpu)
            result.writer_seconds.append(time_sdk_writer(tap_class, records))
            print(
                f"[{tap.name}] run {repeat + 1}: tap {result.tap_seconds[-1]:.2f} s "
                f"(CPU {cpu:.2f} s, sandbox CPU {result.sandbox_cpu_during_tap[-1]:.2f} s), "
                f"sandbox only {seconds:.2f} s (CPU {result.sandbox_cpu_seconds[-1]:.2f} s), "
                f"SDK writer {result.writer_seconds[-1]:.2f} s",
                file=sys.stderr,
            )
        if args.profile:
            print(f"\n== cProfile of tap-{tap.name} ==\n{profile_tap(tap, config_path, folder, args.timeout)}")
    return result


def table(results: list[TapResult]) -> str:
    """The per-tap summary: medians of the repeats, in records per second."""
    header = (
        f"{'tap':<11}{'records':>9}{'requests':>9}{'tap rec/s':>11}{'sandbox-only':>14}{'tap overhead':>14}"
        f"{'tap CPU':>10}{'SDK writer':>12}{'tap/writer':>12}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        median = result.median
        tap_s, sandbox_s, writer_s = (
            median(result.tap_seconds),
            median(result.sandbox_seconds),
            median(result.writer_seconds),
        )
        tap_rate, writer_rate = result.rate(tap_s), result.rate(writer_s)
        overhead = f"{result.rate(tap_s - sandbox_s):,.0f}" if tap_s > sandbox_s else "<noise"
        lines.append(
            f"{result.name:<11}{result.records:>9,}{result.requests:>9,}{tap_rate:>11,.0f}"
            f"{result.rate(sandbox_s):>14,.0f}{overhead:>14}{result.rate(median(result.tap_cpu_seconds)):>10,.0f}"
            f"{writer_rate:>12,.0f}{tap_rate / writer_rate:>11.3f}x"
        )
    lines += [
        "",
        "tap rec/s: end to end, process start to exit; sandbox-only: the same requests replayed; tap overhead: "
        "records / (tap - sandbox-only)",
        "seconds; tap CPU: records / the tap process's CPU seconds; SDK writer: singer-sdk's SingerWriter alone.",
        "",
        "median seconds: tap wall (tap CPU, sandbox CPU serving it) | sandbox-only wall (sandbox CPU) | SDK writer",
    ]
    for result in results:
        median = result.median
        lines.append(
            f"  {result.name:<11}{median(result.tap_seconds):7.2f} ({median(result.tap_cpu_seconds):6.2f}, "
            f"{median(result.sandbox_cpu_during_tap):6.2f}) | {median(result.sandbox_seconds):6.2f} "
            f"({median(result.sandbox_cpu_seconds):6.2f}) | {median(result.writer_seconds):5.2f};"
            f"  {result.per_resource:,} per resource, {result.response_bytes / 1e6:,.0f} MB of responses"
        )
    by_name = {result.name: result for result in results}
    if "shopify" in by_name and "shopify-bulk" in by_name:
        paged, bulk = by_name["shopify"], by_name["shopify-bulk"]
        speedup = TapResult.median(paged.tap_seconds) / TapResult.median(bulk.tap_seconds)
        lines += [
            "",
            f"shopify backfill, bulk operations against paging: {speedup:.1f}x the records/s, "
            f"{paged.requests:,} requests paged against {bulk.requests:,} in bulk "
            f"({paged.records:,} and {bulk.records:,} records)",
        ]
    lines += ["", "records per stream:"]
    lines += [f"  {result.name}: {dict(sorted(result.streams.items()))}" for result in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taps", default=",".join(TAPS), help=f"comma-separated taps (default {','.join(TAPS)})")
    parser.add_argument(
        "--records",
        type=int,
        help="synthetic records per resource (default: 20,000; shopify 2,000)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; medians (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="limit for each run, in seconds (default 900)")
    parser.add_argument("--profile", action="store_true", help="also run each tap once under cProfile")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.taps.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(TAPS))
    if unknown or not chosen:
        parser.error(f"--taps: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(TAPS)}")
    if (args.records is not None and args.records < 1) or args.repeats < 1:
        parser.error("--records and --repeats must be at least 1")

    print(
        f"tap throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, median of {args.repeats} runs"
    )
    with tempfile.TemporaryDirectory(prefix="cdp-tap-bench-") as tmp:
        results = [benchmark(TAPS[name], args, Path(tmp)) for name in chosen]
    print(table(results))


if __name__ == "__main__":
    main()
