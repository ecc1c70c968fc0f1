"""singer-sdk's standard target tests, then our own checks of what target-s3raw wrote for the same inputs."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from singer_sdk.testing import TargetTestRunner, get_target_test_class, target_test_streams

from plugins.core.raw_zone import METADATA_COLUMNS
from plugins.core.storage import ObjectStore
from schema_registry import SchemaRegistry, subject_name
from targets.s3raw.target import TargetS3Raw
from tests.s3raw_support import dead_letters, raw_by_stream, run_target, zone_config


class TestTargetS3RawStandard(get_target_test_class(TargetS3Raw)):  # type: ignore[misc]
    @pytest.fixture
    def runner(self, tmp_path: Path) -> TargetTestRunner:
        """singer-sdk's own runner fixture, with zones in the test's temporary folder (removed by pytest)."""
        return TargetTestRunner(TargetS3Raw, config=zone_config(str(tmp_path)), parse_env_config=True)


def singer_file(name: str) -> list[bytes]:
    """The lines of one of singer-sdk's standard target test inputs."""
    path = importlib.resources.files(target_test_streams) / f"{name}.singer"
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def sent_records(lines: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    messages = [orjson.loads(line) for line in lines]
    return [(m["stream"], m["record"]) for m in messages if m["type"] == "RECORD"]


def without_metadata(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in METADATA_COLUMNS}


@pytest.mark.parametrize(
    "name",
    [
        "array_data",
        "camelcase_complex_schema",
        "duplicate_records",
        "encoded_string_data",
        "optional_attributes",
        "record_missing_fields",
        "special_chars_in_attributes",
    ],
)
def test_standard_inputs_land_every_record_exactly_as_sent(tmp_path: Path, name: str) -> None:
    lines = singer_file(name)
    config = zone_config(str(tmp_path))
    run_target(config, lines)  # type: ignore[arg-type]

    landed = [without_metadata(r) for records in raw_by_stream(config).values() for r in records]
    expected = [record for _, record in sent_records(lines)]
    assert sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in landed) == sorted(
        orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in expected
    )
    assert dead_letters(config) == []


def test_standard_schema_updates_register_versions_and_stamp_records(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    run_target(config, singer_file("schema_updates"))  # type: ignore[arg-type]

    registry = SchemaRegistry(ObjectStore(config["registry_url"]))
    versions = registry.versions(subject_name("acme", "stripe", "test_schema_updates"))
    landed = raw_by_stream(config)["test_schema_updates"]
    assert len(versions) >= 2
    assert {r["_cdp_schema_version"] for r in landed} == set(versions)
    assert sorted(r["id"] for r in landed) == sorted(r["id"] for _, r in sent_records(singer_file("schema_updates")))


def test_standard_record_missing_required_property_goes_to_the_dlq(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    run_target(config, singer_file("record_missing_required_property"))  # type: ignore[arg-type]

    [letter] = dead_letters(config)
    assert letter["error_type"] == "schema_validation"
    assert letter["record"] == {"metric": 3215}
    assert letter["errors"][0]["path"] == "$"
    assert raw_by_stream(config) == {}


def test_standard_multiple_state_messages_are_relayed_after_their_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = zone_config(str(tmp_path), batch_size=2)
    _, states = run_target(config, singer_file("multiple_state_messages"), capsys)  # type: ignore[arg-type]

    assert states[-1] == {"test_multiple_state_messages_a": 5, "test_multiple_state_messages_b": 6}
    assert states == sorted(
        states, key=lambda s: (s["test_multiple_state_messages_a"], s["test_multiple_state_messages_b"])
    )
