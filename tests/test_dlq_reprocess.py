"""``cdp dlq reprocess``: fixed records move to raw, the rest stay in the DLQ, nothing lost or doubled by a crash."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from plugins.cli.app import main
from plugins.core.dead_letters import FieldError
from plugins.core.storage import ObjectStore
from plugins.dlq.ops import RETIRED_PREFIX, list_batches
from plugins.dlq.record_mapping import load_mapping
from plugins.dlq.reprocess import REPROCESS_JOURNAL_PREFIX, Reprocessor
from schema_registry import SchemaRegistry
from tests.dlq_helpers import (
    SCHEMA_V1,
    SCHEMA_V2,
    STREAM,
    SUBJECT,
    Zones,
    all_rows,
    customer,
    failing_batch,
    validation_letter,
    write_letters,
)


@pytest.fixture
def zones(store_url: str) -> Zones:
    zones = Zones.under(store_url)
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V1)
    return zones


def _run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(args)
    out = capsys.readouterr().out
    return code, orjson.loads(out) if out.strip().startswith(("{", "[")) else out


def _reprocessor(zones: Zones, dlq: ObjectStore | None = None, **kwargs: Any) -> Reprocessor:
    return Reprocessor(dlq or zones.dlq, zones.raw, SchemaRegistry(zones.registry), actor="tester", **kwargs)


def _state(zones: Zones) -> dict[str, Any]:
    """What a finished reprocess leaves: ids in raw and DLQ, object counts, no journal, retired sources."""
    raw = all_rows(zones.raw)
    dlq = all_rows(zones.dlq)
    return {
        "raw_ids": sorted(r["id"] for r in raw),
        "raw_objects": len(zones.raw.list()),
        "dlq_records": sorted(orjson.dumps(r["record"], option=orjson.OPT_SORT_KEYS) for r in dlq),
        "dlq_retry_counts": sorted(r["retry_count"] for r in dlq),
        "dlq_batches": len(list_batches(zones.dlq)),
        "journals": len(zones.dlq.list(REPROCESS_JOURNAL_PREFIX)),
        "retired": len(zones.dlq.list(RETIRED_PREFIX)),
    }


def test_fixed_schema_moves_records_to_raw_conserving_counts_and_audits(zones: Zones, capsys) -> None:
    source = failing_batch(zones.dlq, fixable=3, broken=2)
    code, before = _run_json(["dlq", "reprocess", source, *zones.cli_options(), "--json"], capsys)
    assert code == 0
    assert before["totals"] == {"batches": 1, "records": 5, "passed": 0, "failed": 5}  # v1 still rejects them all

    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)  # support fixes the schema
    (current,) = [b.key for b in list_batches(zones.dlq)]
    code, report = _run_json(["dlq", "reprocess", current, *zones.cli_options(), "--actor", "alice", "--json"], capsys)

    assert code == 0
    assert report["totals"] == {"batches": 1, "records": 5, "passed": 3, "failed": 2}
    raw = all_rows(zones.raw)
    dlq = all_rows(zones.dlq)
    assert len(raw) + len(dlq) == 5
    assert sorted(r["id"] for r in raw) == ["cus_0000", "cus_0001", "cus_0002"]
    assert all(r["_cdp_schema_version"] == 2 and r["_cdp_reprocessed_from"].startswith(current) for r in raw)
    assert [r["retry_count"] for r in dlq] == [2, 2]  # failed once on v1 by the first reprocess, then again on v2
    assert all(r["errors"] == [{"path": "$", "message": '"id" is a required property'}] for r in dlq)

    code, audit = _run_json(["dlq", "audit", "--dlq-url", zones.dlq.url, "--json"], capsys)
    last = audit["entries"][-1]
    assert (last["action"], last["actor"], last["batches"]) == ("reprocess", "alice", [current])
    assert last["counts_before"] == {"dlq_batches": 1, "dlq_records": 5}
    assert last["counts_after"] == {"raw_records": 3, "dlq_records": 2, "retired_batches": 1}


class _Crash(Exception):
    """The crash a test injects between two writes."""


class _CrashingStore(ObjectStore):
    """A DLQ store that dies at one point of the reprocess protocol, like a killed process."""

    def __init__(self, url: str, crash_at: str) -> None:
        super().__init__(url)
        self.crash_at = crash_at

    def write_bytes(self, key: str, data: bytes) -> str:
        if self.crash_at == "between_raw_and_dlq_writes" and not key.startswith("_"):
            raise _Crash(key)
        return super().write_bytes(key, data)

    def move(self, source: str, destination: str) -> None:
        if self.crash_at == "before_retire":
            raise _Crash(source)
        super().move(source, destination)

    def delete(self, key: str) -> None:
        if self.crash_at == "before_journal_delete" and key.startswith(REPROCESS_JOURNAL_PREFIX):
            raise _Crash(key)
        super().delete(key)


@pytest.mark.parametrize("crash_at", ["between_raw_and_dlq_writes", "before_retire", "before_journal_delete"])
def test_crash_then_rerun_ends_in_the_same_state_as_a_clean_run(store_url: str, crash_at: str) -> None:
    clean, crashed = Zones.under(f"{store_url}/clean"), Zones.under(f"{store_url}/crashed")
    for zones in (clean, crashed):
        SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    clean_source, crashed_source = failing_batch(clean.dlq), failing_batch(crashed.dlq)
    _reprocessor(clean).run([clean_source])

    with pytest.raises(_Crash):
        _reprocessor(crashed, dlq=_CrashingStore(crashed.dlq.url, crash_at)).run([crashed_source])
    assert len(crashed.dlq.list(REPROCESS_JOURNAL_PREFIX)) == 1
    rerun = _reprocessor(crashed).run([crashed_source])

    assert rerun.ok
    assert _state(crashed) == _state(clean)
    assert _state(crashed)["raw_ids"] == ["cus_0000", "cus_0001", "cus_0002"]
    assert _state(crashed)["journals"] == 0


def test_rerun_after_a_finished_reprocess_changes_nothing(zones: Zones) -> None:
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    source = failing_batch(zones.dlq)
    _reprocessor(zones).run([source])
    before = _state(zones)

    again = _reprocessor(zones).run([source])

    assert [o.status for o in again.outcomes] == ["already_done"]
    assert again.audit_key is None
    assert _state(zones) == before


def test_dry_run_reports_the_outcome_and_writes_nothing(zones: Zones) -> None:
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    source = failing_batch(zones.dlq)
    objects_before = zones.dlq.list()

    report = _reprocessor(zones).run([source], dry_run=True)

    assert (report.outcomes[0].status, report.outcomes[0].passed, report.outcomes[0].failed) == ("dry_run", 3, 2)
    assert zones.dlq.list() == objects_before
    assert zones.raw.list() == []


def test_map_file_fixes_records_before_validation(zones: Zones, tmp_path) -> None:
    letters = [
        validation_letter(
            {"customer_id": f"cus_{n}", "amount": f"{n}00"},
            [FieldError("$", "'id' is a required property"), FieldError("$.amount", "not of type integer")],
        )
        for n in range(4)
    ]
    (source,) = write_letters(zones.dlq, letters)
    mapping_file = tmp_path / "fix.yaml"
    mapping_file.write_text("rename: {customer_id: id}\ncast: {amount: integer}\n")

    report = _reprocessor(zones, mapping=load_mapping(mapping_file)).run([source])

    assert report.totals()["passed"] == 4
    assert sorted((r["id"], r["amount"]) for r in all_rows(zones.raw)) == [
        ("cus_0", 0),
        ("cus_1", 100),
        ("cus_2", 200),
        ("cus_3", 300),
    ]


def test_subject_without_schema_fails_the_batch_and_leaves_it_in_place(store_url: str) -> None:
    zones = Zones.under(store_url)
    source = failing_batch(zones.dlq)

    report = _reprocessor(zones).run([source])

    assert not report.ok
    assert "cdp schema register" in report.outcomes[0].message
    assert [b.key for b in list_batches(zones.dlq)] == [source]


def test_extraction_failures_are_refused_with_a_pointer_to_resubmit(zones: Zones) -> None:
    from plugins.core.dead_letters import DeadLetter, ErrorType

    letter = DeadLetter(ErrorType.EXTRACTION_FAILED, "500", STREAM, {"method": "GET"}, context={"stream": STREAM})
    (source,) = write_letters(zones.dlq, [letter])

    report = _reprocessor(zones).run([source])

    assert report.outcomes[0].status == "failed"
    assert "resubmit" in report.outcomes[0].message


def test_reprocess_by_filter_picks_matching_batches_only(zones: Zones, capsys) -> None:
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    failing_batch(zones.dlq)
    write_letters(zones.dlq, [validation_letter(customer(9), [FieldError("$", "x")])], tenant="other")

    code, report = _run_json(["dlq", "reprocess", "--tenant", "acme", *zones.cli_options(), "--json"], capsys)

    assert code == 0
    assert [b["source"].split("/")[0] for b in report["batches"]] == ["acme"]
    assert len(list_batches(zones.dlq, count_records=False)) == 2  # other's batch + acme's still-failing records


def test_reprocess_without_batches_or_filter_is_a_usage_error(zones: Zones) -> None:
    assert main(["dlq", "reprocess", *zones.cli_options()]) == 2


def test_missing_batch_is_reported_as_failed(zones: Zones) -> None:
    missing = "acme/stripe/schema_validation/year=2026/month=01/day=01/customers_20260101T000000000000Z_00ff.ndjson.gz"
    report = _reprocessor(zones).run([missing])
    assert report.outcomes[0].status == "failed"
    assert "no DLQ batch" in report.outcomes[0].message


def test_a_corrupt_batch_is_reported_and_left_in_place(zones: Zones) -> None:
    source = "acme/stripe/schema_validation/year=2026/month=01/day=01/customers_20260101T000000000000Z_00ff.ndjson.gz"
    zones.dlq.write_bytes(source, b"not gzip at all")

    report = _reprocessor(zones).run([source])

    assert report.outcomes[0].status == "failed"
    assert "not gzip NDJSON" in report.outcomes[0].message
    assert zones.dlq.exists(source)
