"""``cdp dlq`` and the rest of the CLI: bad input is one clear line, user text is printed literally."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.cli.app import main
from plugins.cli.output import print_error
from plugins.core.dead_letters import FieldError
from plugins.dlq.audit import AuditLog
from plugins.dlq.ops import list_batches
from schema_registry import SchemaRegistry
from tests.dlq_helpers import SCHEMA_V2, SUBJECT, Zones, customer, validation_letter, write_letters

PATTERN_MESSAGE = "'Acme' does not match '^[a-z0-9_]+$'"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def zones(tmp_path: Path) -> Zones:
    zones = Zones.under(str(tmp_path / "zone"))
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    return zones


@pytest.mark.parametrize("step", ["rename: {1: id}", "cast: {true: integer}", "set: {2: x}", "drop: [3]"])
def test_a_map_with_a_key_that_is_not_a_string_is_one_clear_line(
    zones: Zones, tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str
) -> None:
    mapping = tmp_path / "fix.yaml"
    mapping.write_text(step + "\n")
    write_letters(zones.dlq, [validation_letter(customer(1), [FieldError("$", "x")])])

    code = main(["dlq", "reprocess", "--tenant", "acme", "--map", str(mapping), *zones.cli_options()])

    assert code == 1
    err = _one_line_error(capsys)
    assert f"--map {mapping} ({step.split(':')[0]})" in err
    assert "not a property path; quote it" in err


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list", "--since", "9999999d"],
        ["dlq", "stats", "--since", "99999999999999999999w"],
        ["dlq", "audit", "--since", "9999999d"],
        ["dlq", "purge", "--older-than", "9999999d", "--yes"],
        ["dlq", "alert", "--window", "9999999d"],
    ],
)
def test_out_of_range_durations_are_one_clear_line(
    zones: Zones, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code = main([*args, "--dlq-url", zones.dlq.url])

    assert code == 1
    err = _one_line_error(capsys)
    option = next(a for a in args if a.startswith("--") and a != "--yes")
    assert f"'{option}'" in err
    assert "is longer than 100 years (36525d)" in err


def test_a_map_that_calls_sys_exit_stops_the_run_with_a_clear_line_and_an_audit_entry(
    zones: Zones, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_letters(zones.dlq, [validation_letter(customer(1, nickname="a"), [FieldError("$", "x")])])
    second = write_letters(zones.dlq, [validation_letter(customer(2, nickname="b"), [FieldError("$", "x")])])
    mapping = tmp_path / "fix.py"
    mapping.write_text(
        "import sys\ndef map_record(record, stream):\n    if record['id'] == 'cus_0002':\n        sys.exit(3)\n"
    )

    code = main(["dlq", "reprocess", *first, *second, "--map", str(mapping), *zones.cli_options()])

    assert code == 1
    err = _one_line_error(capsys)
    assert "map_record called sys.exit(3)" in err
    (entry,) = AuditLog(zones.dlq).entries(action="reprocess")
    assert entry.outcome == "aborted"
    assert entry.batches == first  # the batch done before the exit is kept and counted
    assert "sys.exit(3)" in entry.details["aborted"]
    assert [b.key for b in list_batches(zones.dlq)] == second  # the one in hand is untouched


def test_error_lines_print_user_text_literally(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(f"tenant {PATTERN_MESSAGE} [bold]x[/]")
    assert capsys.readouterr().err.strip() == f"error: tenant {PATTERN_MESSAGE} [bold]x[/]"


def test_tables_print_messages_literally(zones: Zones, capsys: pytest.CaptureFixture[str]) -> None:
    (key,) = write_letters(zones.dlq, [validation_letter(customer(1), [FieldError("$.tenant", PATTERN_MESSAGE)])])
    capsys.readouterr()

    assert main(["dlq", "show", key, "--dlq-url", zones.dlq.url]) == 0

    assert "[a-z0-9_]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list", "--dlq-url", "s3://no-such-bucket/dlq"],
        ["dlq", "stats", "--lake-url", "s3://no-such-bucket"],
        ["dlq", "purge", "--older-than", "1d", "--yes", "--dlq-url", "s3://no-such-bucket/dlq"],
        ["dlq", "audit", "--dlq-url", "s3://no-such-bucket/dlq"],
        ["schema", "list", "--registry-url", "s3://no-such-bucket/registry"],
    ],
)
def test_a_store_in_a_bucket_that_does_not_exist_is_one_clear_line_not_an_empty_report(
    s3_endpoint: str, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code = main(args)

    assert code == 1
    err = _one_line_error(capsys)
    assert "bucket 'no-such-bucket' does not exist" in err
