"""``--map FILE``: the record mappings support applies before reprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.core.errors import ConfigError
from plugins.dlq.record_mapping import RecordMappingError, load_mapping


def _mapping_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_mapping_renames_drops_sets_and_casts_nested_paths(tmp_path: Path) -> None:
    mapping = load_mapping(
        _mapping_file(
            tmp_path,
            "fix.yaml",
            "rename: {email_address: email, address.zip: address.postal_code}\n"
            "drop: [legacy_id, address.debug]\n"
            "set: {currency: usd, meta.source: dlq}\n"
            "cast: {amount: integer, score: number, active: boolean, address.number: string}\n",
        )
    )
    record = {
        "email_address": "a@b.c",
        "legacy_id": 7,
        "amount": "1200",
        "score": "4.5",
        "active": "yes",
        "address": {"zip": "75001", "debug": True, "number": 12},
    }

    mapped = mapping.apply(record, "customers")

    assert mapped == {
        "email": "a@b.c",
        "amount": 1200,
        "score": 4.5,
        "active": True,
        "address": {"postal_code": "75001", "number": "12"},
        "currency": "usd",
        "meta": {"source": "dlq"},
    }
    assert record["email_address"] == "a@b.c"  # the input is never changed


def test_json_mapping_applies_only_to_its_streams(tmp_path: Path) -> None:
    mapping = load_mapping(_mapping_file(tmp_path, "fix.json", '{"streams": ["charges"], "drop": ["x"]}'))
    assert mapping.apply({"x": 1}, "customers") == {"x": 1}
    assert mapping.apply({"x": 1}, "charges") == {}


def test_a_failing_cast_is_this_records_error_with_its_path(tmp_path: Path) -> None:
    mapping = load_mapping(_mapping_file(tmp_path, "fix.yml", "cast: {amount: integer}\n"))
    with pytest.raises(RecordMappingError) as caught:
        mapping.apply({"amount": "12.5"}, "s")
    assert caught.value.path == "$.amount"
    assert "whole number" in caught.value.message


def test_python_mapping_handles_the_hard_cases(tmp_path: Path) -> None:
    mapping = load_mapping(
        _mapping_file(
            tmp_path,
            "fix.py",
            "def map_record(record, stream):\n"
            "    first, _, last = record.pop('full_name').partition(' ')\n"
            "    return {**record, 'first': first, 'last': last, 'stream': stream}\n",
        )
    )
    assert mapping.apply({"full_name": "Ada Lovelace"}, "people") == {
        "first": "Ada",
        "last": "Lovelace",
        "stream": "people",
    }
    assert mapping.describe()["kind"] == "python"


def test_python_mapping_exceptions_become_record_errors(tmp_path: Path) -> None:
    mapping = load_mapping(
        _mapping_file(tmp_path, "fix.py", "def map_record(record, stream):\n    return record['x']\n")
    )
    with pytest.raises(RecordMappingError, match="KeyError"):
        mapping.apply({}, "s")


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("bad.yaml", "cast: {amount: money}\n", "(cast)"),
        ("bad.yaml", "rename: [a, b]\n", "(rename)"),
        ("bad.yaml", "drop: ['a..b']\n", "(drop)"),
        ("bad.yaml", "remove: [a]\n", "unknown keys"),
        ("bad.json", "{not json", "not valid json"),
        ("bad.py", "def other(record):\n    return record\n", "map_record"),
    ],
)
def test_a_bad_mapping_file_fails_fast_naming_the_step(tmp_path: Path, name: str, text: str, named: str) -> None:
    path = _mapping_file(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert str(path) in str(caught.value)
    assert named in str(caught.value)


def test_a_missing_mapping_file_fails_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--map"):
        load_mapping(tmp_path / "nope.yaml")
