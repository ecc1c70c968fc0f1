"""plugins/connectors/testing.py's waiting helpers: they return the evidence, or fail naming what they waited for."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.connectors.testing import FakeClock, announced_url, wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), 5, "a ready answer") == "ready"


def test_wait_until_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"waited 0\.05 s for the marker file, in vain"):
        wait_until(lambda: None, 0.05, "the marker file")


def test_wait_until_async_lets_the_loop_run_while_it_waits() -> None:
    async def scenario() -> str:
        done: list[str] = []
        asyncio.get_running_loop().call_soon(done.append, "callback ran")
        return await wait_until_async(lambda: done and done[0], 5, "the callback")

    assert asyncio.run(scenario()) == "callback ran"


def test_announced_url_reads_what_a_server_printed(tmp_path: Path) -> None:
    output = tmp_path / "stdout"
    code = "import sys; print('demo on http://127.0.0.1:4321 (ready)', flush=True); sys.stdin.read()"
    with output.open("wb") as stdout:
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=stdout)
    try:
        assert announced_url(process, output) == "http://127.0.0.1:4321"
    finally:
        process.communicate(timeout=10)


def test_announced_url_fails_at_once_when_the_server_exits_without_one(tmp_path: Path) -> None:
    output = tmp_path / "stdout"
    with output.open("wb") as stdout:
        process = subprocess.Popen([sys.executable, "-c", "print('address in use')"], stdout=stdout)
    with pytest.raises(AssertionError, match=r"exited \(0\) before its URL: address in use"):
        announced_url(process, output, timeout=30)


def test_fake_clock_moves_only_when_told() -> None:
    still, ticking = FakeClock(start=100.0), FakeClock(tick=0.25)
    assert (still(), still()) == (100.0, 100.0)
    still.advance(0.3)
    assert still() == pytest.approx(100.3)
    assert (ticking(), ticking()) == (0.25, 0.5)
