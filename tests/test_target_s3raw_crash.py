"""At-least-once: kill target-s3raw before a flush, re-run from its last emitted STATE, and nothing is lost."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from plugins.connectors.testing import wait_until
from plugins.core.storage import ObjectStore
from schema_registry import SchemaRegistry, subject_name
from tests.conftest import REPO_ROOT
from tests.s3raw_support import (
    CUSTOMERS_SCHEMA,
    raw_records,
    record_message,
    schema_message,
    state_message,
    zone_config,
)

TARGET = str(REPO_ROOT / ".venv" / "bin" / "target-s3raw")
TOTAL = 100


def tap_output(start: int, stop: int) -> bytes:
    """What a tap resuming at ``start`` sends: the schema, records, and a STATE (next offset) every 10 records."""
    lines = [schema_message("customers", CUSTOMERS_SCHEMA)]
    for offset in range(start, stop):
        lines.append(record_message("customers", {"id": f"c{offset:03d}", "age": offset}))
        if (offset + 1) % 10 == 0:
            lines.append(state_message({"offset": offset + 1}))
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def read_state(process: subprocess.Popen[bytes], want: int, timeout: float = 30) -> dict[str, Any]:
    """Read STATE lines from the target until one with ``offset >= want``.

    Reads the pipe itself (os.read) rather than through the buffered file: a readline() that pulls two STATE lines
    into the buffer returns only the first, and select() would never report the second.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip() and json.loads(line)["offset"] >= want:
                return dict(json.loads(line))
    raise AssertionError(f"no STATE with offset >= {want} within {timeout} s")


def test_kill_before_a_flush_then_rerun_from_the_last_state_loses_nothing(store_url: str, tmp_path: Path) -> None:
    config = zone_config(store_url, batch_size=25)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    crashed = subprocess.Popen(
        [TARGET, "--config", str(config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert crashed.stdin is not None
    crashed.stdin.write(tap_output(0, 70))  # Batches of 25 flush at 25 and 50; 20 records stay buffered.
    crashed.stdin.flush()  # The input stays open: the target idles with 20 records buffered.
    last = read_state(crashed, want=50)
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(timeout=30)

    landed_before_rerun = {r["id"] for r in raw_records(config)}
    assert last == {"offset": 50}
    assert len(landed_before_rerun) == 50  # The 20 buffered records died with the process...

    subprocess.run(
        [TARGET, "--config", str(config_path)],
        input=tap_output(last["offset"], TOTAL),
        capture_output=True,
        check=True,
        env=env,
        timeout=60,
    )

    landed = [r["id"] for r in raw_records(config)]
    assert set(landed) == {f"c{i:03d}" for i in range(TOTAL)}  # ...and the re-run from the STATE brought them back.
    assert len(landed) == TOTAL


def test_sigterm_writes_buffered_records_and_emits_their_state(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path), batch_size=1000)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    target = subprocess.Popen(
        [TARGET, "--config", str(config_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert target.stdin is not None
    target.stdin.write(tap_output(0, 30))  # All 30 stay buffered: the batch size is 1000.
    # Messages are handled in order: once this SCHEMA is registered, the 30 records and their STATEs were read.
    target.stdin.write(orjson.dumps(schema_message("progress_marker", CUSTOMERS_SCHEMA)) + b"\n")
    target.stdin.flush()
    registry = SchemaRegistry(ObjectStore(config["registry_url"]))
    marker = subject_name("acme", "stripe", "progress_marker")
    wait_until(lambda: registry.versions(marker), 30, "the target to register the marker stream's schema")
    target.send_signal(signal.SIGTERM)
    out, _ = target.communicate(timeout=30)

    assert target.returncode == 0
    assert [json.loads(line) for line in out.splitlines()][-1] == {"offset": 30}
    assert len(raw_records(config)) == 30
