"""Run a tap in tests and read what it said: in-process or as a real subprocess, with config and state.

    run = run_tap(TapStripe, config, state=previous.last_state)
    assert run.counts() == {"customers": 250}
    assert run.bookmark("customers") == 1704967200

``run_tap`` runs the tap class in this process (fast; the run's failure, if any, is in ``run.error``);
``run_tap_process`` runs its console script in a subprocess (exit code, stderr, killable) exactly as Meltano does.

Tests never sleep to let something happen: they wait for evidence of it with a deadline (``wait_until``), read the
URL a server announced (``announced_url``, for ``--port 0``), and measure run budgets on a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterator

    from singer_sdk import Tap
    from singer_sdk.testing import SuiteConfig, TapTestRunner
    from starlette.types import ASGIApp

T = TypeVar("T")
POLL_SECONDS = 0.01  # How often a wait looks again: short next to any deadline, long next to a check.


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Return ``predicate()``'s first truthy value; fail naming ``what`` if none comes within ``timeout`` seconds.

    ``predicate`` may raise to give up early (a process that exited cannot write the line waited for).
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        _fail_after(deadline, timeout, what)
        time.sleep(POLL_SECONDS)
    return value


async def wait_until_async(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """:func:`wait_until` inside an event loop: the loop goes on running (callbacks, readers) while it waits."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        _fail_after(deadline, timeout, what)
        await asyncio.sleep(POLL_SECONDS)
    return value


def _fail_after(deadline: float, timeout: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"waited {timeout:g} s for {what}, in vain")


_URL = re.compile(r"https?://\S+?(?=[\s)])")  # Up to a space or newline: never a URL half written.


def announced_url(process: subprocess.Popen[Any], output: Path, timeout: float = 30) -> str:
    """The first URL a server process wrote to ``output`` (the file its stdout goes to), once it has written it.

    Servers started with ``--port 0`` (``cdp sandbox serve``, ``cdp webhooks serve``) print the URL they bound; the
    socket is listening by then, so the URL can be used at once.
    """

    def url() -> str | None:
        exited = process.poll() is not None  # Read before the output: all of it is there if it exited.
        text = output.read_text(encoding="utf-8", errors="replace") if output.exists() else ""
        match = _URL.search(text)
        if match is None and exited:
            raise AssertionError(f"{process.args!r} exited ({process.returncode}) before its URL: {text[-2000:]}")
        return match.group(0) if match else None

    return wait_until(url, timeout, f"{output} to hold the URL the server bound")


class FakeClock:
    """A clock that moves only when told to: ``advance(seconds)``, or ``tick`` seconds on every reading.

    Stands in for the real clock where a test needs "the budget runs out half-way" (``CdpTap.clock``) or "the batch
    is old by now" (``TargetS3Raw.clock``; start it at ``time.time()``), so the outcome does not depend on how fast
    the machine is. One writer at a time (the test, or a sandbox thread) is all it needs.
    """

    def __init__(self, start: float = 0.0, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class TapRun:
    """The Singer messages one tap run wrote, and how it ended."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""
    exit_code: int | None = 0
    error: BaseException | None = None

    @classmethod
    def from_output(cls, stdout: str, **kwargs: Any) -> TapRun:
        """Parse the tap's stdout (one JSON message per line; a torn last line from a killed tap is dropped)."""
        messages = []
        for line in stdout.splitlines():
            if not line.strip():
                continue
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return cls(messages=messages, **kwargs)

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [message for message in self.messages if message.get("type") == message_type]

    def records(self, stream: str | None = None) -> list[dict[str, Any]]:
        """The records emitted (for ``stream``, or all)."""
        return [m["record"] for m in self.of_type("RECORD") if stream is None or m["stream"] == stream]

    def counts(self) -> dict[str, int]:
        """Records emitted per stream."""
        return dict(Counter(message["stream"] for message in self.of_type("RECORD")))

    @property
    def states(self) -> list[dict[str, Any]]:
        return [message["value"] for message in self.of_type("STATE")]

    @property
    def last_state(self) -> dict[str, Any] | None:
        """The last STATE emitted: what Meltano would store and pass to the next run."""
        states = self.states
        return states[-1] if states else None

    def bookmark(self, stream: str, state: dict[str, Any] | None = None) -> Any:
        """The stream's ``replication_key_value`` in ``state`` (default: the last STATE), or None."""
        state = state if state is not None else self.last_state
        return ((state or {}).get("bookmarks", {}).get(stream) or {}).get("replication_key_value")


def run_tap(
    tap_class: type[Tap],
    config: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    catalog: dict[str, Any] | None = None,
) -> TapRun:
    """Run ``tap_class`` in this process and collect its messages; an exception it raises ends up in ``error``."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stderr = io.StringIO()
    error: BaseException | None = None
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            tap = tap_class(config=config, state=state, catalog=catalog, validate_config=True)
            tap.sync_all()
        except Exception as exc:
            error = exc
        stdout.flush()
    stdout.seek(0)
    return TapRun.from_output(stdout.read(), stderr=stderr.getvalue(), exit_code=1 if error else 0, error=error)


@dataclass
class TapProcess:
    """A tap running as a subprocess; ``wait()`` or ``kill()`` it, then read its :class:`TapRun`."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    workdir: tempfile.TemporaryDirectory[str]

    def output(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, predicate_text: str, timeout: float = 30) -> None:
        """Block until the tap's stdout contains ``predicate_text`` (e.g. a STATE with a bookmark)."""
        self.wait_for_state(lambda _: predicate_text in self.output(), timeout, f"the tap to write {predicate_text!r}")

    def wait_for_state(
        self, predicate: Callable[[TapRun], bool], timeout: float = 30, what: str = "the expected tap output"
    ) -> TapRun:
        """Block until what the tap has written so far satisfies ``predicate`` (e.g. a stream has a bookmark)."""

        def satisfied() -> TapRun | None:
            exited = self.process.poll() is not None  # Read before the output: all of it is there if it exited.
            so_far = TapRun.from_output(self.output())
            if predicate(so_far):
                return so_far
            if exited:
                raise AssertionError(f"tap exited ({self.process.returncode}) before {what}")
            return None

        return wait_until(satisfied, timeout, what)

    def kill(self) -> TapRun:
        """SIGKILL the tap (no chance to write anything more) and return what it had written."""
        self.process.send_signal(signal.SIGKILL)
        return self.wait()

    def wait(self, timeout: float = 120) -> TapRun:
        code = self.process.wait(timeout=timeout)
        run = TapRun.from_output(
            self.output(), stderr=self.stderr_path.read_text(encoding="utf-8", errors="replace"), exit_code=code
        )
        self.workdir.cleanup()
        return run


def start_tap_process(
    executable: str,
    config: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> TapProcess:
    """Start the tap's console script (e.g. ``tap-stripe``) with ``--config`` and ``--state`` files."""
    workdir = tempfile.TemporaryDirectory(prefix="cdp-tap-")
    folder = Path(workdir.name)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    command = [_script(executable), "--config", str(folder / "config.json")]
    if state is not None:
        (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")
        command += ["--state", str(folder / "state.json")]
    stdout_path, stderr_path = folder / "stdout.jsonl", folder / "stderr.log"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env={**os.environ, **(env or {})})
    return TapProcess(process, stdout_path, stderr_path, workdir)


def run_tap_process(
    executable: str,
    config: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> TapRun:
    """Run the tap's console script to the end and return its messages, stderr and exit code."""
    return start_tap_process(executable, config, state=state, env=env).wait(timeout=timeout)


def _script(executable: str) -> str:
    """The console script next to this interpreter (the project's venv), else whatever PATH finds."""
    candidate = Path(sys.executable).parent / executable
    return str(candidate) if candidate.exists() else executable


def standard_tap_test_class(
    tap_class: type[Tap],
    create_app: Callable[[], ASGIApp],
    config: Callable[[str, Path], dict[str, Any]],
    *,
    suite_config: SuiteConfig | None = None,
) -> type[Any]:
    """singer-sdk's standard tap tests, against a sandbox that a class-scoped fixture starts and stops.

    singer-sdk builds the test class at import and discovers the streams then (they name the stream tests); some taps
    discover by asking the API (Salesforce's describe), so a sandbox from ``create_app`` serves that discovery and is
    stopped before this returns. The tests sync against another sandbox from ``create_app`` (same seed, same data)
    that lives as long as the class. ``config(url, folder)`` is the tap's config for a sandbox URL and a scratch
    folder (for its DLQ, say).
    """
    import pytest
    from singer_sdk.testing import TapTestRunner, get_tap_test_class

    from plugins.connectors.sandbox import SandboxServer

    with SandboxServer(create_app()) as discovery, tempfile.TemporaryDirectory(prefix="cdp-discovery-") as folder:
        generated = get_tap_test_class(tap_class, config=config(discovery.url, Path(folder)), suite_config=suite_config)

    class StandardTapTests(generated):  # type: ignore[misc,valid-type]
        @pytest.fixture(scope="class")
        def standard_sandbox_url(self) -> Iterator[str]:
            with SandboxServer(create_app()) as server:
                yield server.url

        @pytest.fixture(scope="class")
        def runner(self, standard_sandbox_url: str, tmp_path_factory: pytest.TempPathFactory) -> TapTestRunner:
            # singer-sdk's own runner fixture, with the config pointing at this class's sandbox.
            folder = tmp_path_factory.mktemp("standard")
            runner = TapTestRunner(
                tap_class, config=config(standard_sandbox_url, folder), suite_config=suite_config, parse_env_config=True
            )
            runner.sync_all()
            return runner

    return StandardTapTests


def dead_letters(dlq_url: str | Path) -> list[dict[str, Any]]:
    """Every dead letter under a DLQ (local folder or s3://), in key order: what a tap test asserts on."""
    from plugins.core.raw_zone import read_batch
    from plugins.core.storage import ObjectStore

    store = ObjectStore(str(dlq_url))
    return [letter for info in store.list() for letter in read_batch(store, info.key)]
