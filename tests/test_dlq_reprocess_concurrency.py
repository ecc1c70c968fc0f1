"""Concurrent and killed ``cdp dlq reprocess`` runs, as real processes: every record ends in exactly one place.

Each source record is identified by its email. After the runs, every email is either in the raw zone once or in the
active DLQ once (never both, never twice), the retired copies are the source batches, and the audit log's counts add
up to what the zones hold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from plugins.core.dead_letters import FieldError
from plugins.dlq.audit import AuditLog
from plugins.dlq.ops import RETIRED_PREFIX, list_batches
from plugins.dlq.reprocess import REPROCESS_JOURNAL_PREFIX
from schema_registry import SchemaRegistry
from tests.dlq_helpers import SCHEMA_V2, SUBJECT, Zones, all_rows, customer, validation_letter, write_letters

ROOT = Path(__file__).resolve().parent.parent
BATCHES = 6
FIXABLE, BROKEN = 3, 2  # Per batch: records v2 accepts, and records missing their id that go back to the DLQ.

# A --map that holds every run at its first record until all runs have reached one, so they really overlap.
BARRIER_MAP = """
import os, pathlib, time
_waited = False
def map_record(record, stream):
    global _waited
    if not _waited:
        _waited = True
        folder = pathlib.Path(os.environ["BARRIER_DIR"])
        (folder / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while len(list(folder.glob("ready-*"))) < int(os.environ["BARRIER_COUNT"]):
            if time.monotonic() > deadline:
                raise SystemExit("barrier: the other runs never arrived")
            time.sleep(0.02)
    return record
"""

# A reprocess of one batch that stops after its raw output is written (journal in place, DLQ output not yet) until
# the test lets it go on, or kills it.
PAUSING_RUN = """
import os, pathlib, sys, time
from plugins.dlq.reprocess import Reprocessor
from plugins.core.storage import ObjectStore
from schema_registry import SchemaRegistry

root, source, control = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])

class PausingStore(ObjectStore):
    def write_bytes(self, key, data):
        if not key.startswith("_"):
            (control / "paused").touch()
            deadline = time.monotonic() + 120
            while not (control / "resume").exists():
                if time.monotonic() > deadline:
                    raise SystemExit("never resumed")
                time.sleep(0.02)
        return super().write_bytes(key, data)

report = Reprocessor(
    PausingStore(f"{root}/dlq"), ObjectStore(f"{root}/raw"), SchemaRegistry(ObjectStore(f"{root}/registry")),
    actor="paused",
).run([source])
print([o.status for o in report.outcomes])
"""


def _email(batch: int, number: int) -> str:
    return f"b{batch}-n{number}@example.com"


def _fill(zones: Zones) -> tuple[list[str], set[str]]:
    """``BATCHES`` DLQ batches of distinct records; returns their keys and every record's email."""
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    keys: list[str] = []
    emails: set[str] = set()
    for b in range(BATCHES):
        letters = [
            validation_letter(customer(b * 100 + n, email=_email(b, n)), [FieldError("$", "nickname")])
            for n in range(FIXABLE)
        ]
        letters += [
            validation_letter({"email": _email(b, FIXABLE + n)}, [FieldError("$", "'id' is a required property")])
            for n in range(BROKEN)
        ]
        emails |= {_email(b, n) for n in range(FIXABLE + BROKEN)}
        keys += write_letters(zones.dlq, letters)
    return keys, emails


def _cli(zones: Zones, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "plugins.cli", "dlq", "reprocess", "--tenant", "acme", *zones.cli_options(), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out + err


def _finish_json(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, orjson.loads(out) if out.strip() else {}, err


def _statuses(report: dict[str, Any]) -> Counter[str]:
    return Counter(b["status"] for b in report["batches"])


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path.name}: {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path.name} within {timeout} s")
        time.sleep(0.02)


def _assert_conserved(zones: Zones, sources: list[str], emails: set[str]) -> None:
    raw = all_rows(zones.raw)
    dlq = all_rows(zones.dlq)
    raw_emails = Counter(r["email"] for r in raw)
    dlq_emails = Counter(e["record"]["email"] for e in dlq)
    assert [e for e, n in raw_emails.items() if n > 1] == []  # no duplicate rows in raw
    assert [e for e, n in dlq_emails.items() if n > 1] == []  # no doubled DLQ entries
    assert set(raw_emails) & set(dlq_emails) == set()
    assert set(raw_emails) | set(dlq_emails) == emails  # nothing lost
    assert len(raw) == BATCHES * FIXABLE
    assert zones.dlq.list(REPROCESS_JOURNAL_PREFIX) == []
    # A run that started after another finished some batches may reprocess that run's new DLQ batches too: every
    # retired batch is a source or such an output, retired by exactly one audited run.
    retired = sorted(info.key[len(RETIRED_PREFIX) + 1 :] for info in zones.dlq.list(RETIRED_PREFIX))
    assert set(sources) <= set(retired)
    assert not set(retired) & {b.key for b in list_batches(zones.dlq, count_records=False)}
    audit = AuditLog(zones.dlq).entries(action="reprocess")
    assert sorted(b for e in audit for b in e.batches) == retired
    assert sum(e.counts_after["retired_batches"] for e in audit) == len(retired)
    assert sum(e.counts_after["raw_records"] for e in audit) == len(raw)
    moved_out = sum(e.counts_before["dlq_records"] for e in audit)
    assert len(emails) - moved_out + sum(e.counts_after["dlq_records"] for e in audit) == len(dlq)


@pytest.mark.parametrize("runs", [2, 3])
def test_parallel_reprocess_runs_conserve_every_record(store_url: str, tmp_path: Path, runs: int) -> None:
    zones = Zones.under(store_url)
    sources, emails = _fill(zones)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    mapping = tmp_path / "barrier_map.py"
    mapping.write_text(BARRIER_MAP)
    env = {"BARRIER_DIR": str(barrier), "BARRIER_COUNT": str(runs)}

    processes = [_cli(zones, "--map", str(mapping), "--actor", f"run{i}", "--json", env=env) for i in range(runs)]
    results = [_finish_json(p) for p in processes]

    assert [code for code, _, _ in results] == [0] * runs, results
    assert len(list(barrier.glob("ready-*"))) == runs  # they did overlap
    statuses = sum((_statuses(report) for _, report, _ in results), Counter())
    assert statuses["reprocessed"] == BATCHES  # each batch by exactly one run
    assert statuses["skipped"] >= runs - 1  # the others met it held and said so
    _assert_conserved(zones, sources, emails)


def _pausing_run(zones: Zones, source: str, control: Path) -> subprocess.Popen[str]:
    script = control / "pausing_run.py"
    script.write_text(PAUSING_RUN)
    process = subprocess.Popen(
        [sys.executable, str(script), zones.root, source, str(control)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(control / "paused", process)
    return process


def test_a_live_runs_journal_is_never_rolled_back(store_url: str, tmp_path: Path) -> None:
    zones = Zones.under(store_url)
    sources, emails = _fill(zones)
    paused = _pausing_run(zones, sources[0], tmp_path)
    assert len(zones.dlq.list(REPROCESS_JOURNAL_PREFIX)) == 1

    others = [_finish_json(p) for p in [_cli(zones, "--actor", "b", "--json"), _cli(zones, "--actor", "c", "--json")]]
    (tmp_path / "resume").touch()
    code, output = _finish(paused)

    assert code == 0, output
    assert "reprocessed" in output
    assert [c for c, _, _ in others] == [0, 0], others
    for _, report, _ in others:  # each left the live run's batch alone and named who holds it
        (held,) = [b for b in report["batches"] if b["source"] == sources[0]]
        assert held["status"] == "skipped"
        assert f"pid {paused.pid}" in held["message"]
    _assert_conserved(zones, sources, emails)


def test_a_run_killed_half_way_is_recovered_by_the_next(store_url: str, tmp_path: Path) -> None:
    zones = Zones.under(store_url)
    sources, emails = _fill(zones)
    paused = _pausing_run(zones, sources[0], tmp_path)
    paused.send_signal(signal.SIGKILL)
    paused.wait(timeout=30)

    code, report, err = _finish_json(_cli(zones, "--json"))

    assert code == 0, err
    assert _statuses(report) == {"rolled_back": 1, "reprocessed": BATCHES}  # the killed attempt undone, then redone
    _assert_conserved(zones, sources, emails)
