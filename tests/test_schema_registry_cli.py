"""``cdp schema ...`` run as a real subprocess: output, --json and exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from plugins.core.schema_dialect import DIALECT
from plugins.core.storage import ObjectStore
from schema_registry import CompatibilityMode, SchemaRegistry
from tests.conftest import REPO_ROOT

CDP = str(REPO_ROOT / ".venv" / "bin" / "cdp")
SUBJECT = "acme/stripe/customers"
V1: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "email": {"type": ["string", "null"]}},
    "required": ["id"],
}
V2: dict[str, Any] = {**V1, "properties": {**V1["properties"], "phone": {"type": ["string", "null"]}}}
NARROWED: dict[str, Any] = {**V1, "properties": {"id": {"type": "integer"}, "email": {"type": ["string", "null"]}}}


def cdp(*args: str, registry: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CDP, "schema", *args, "--registry-url", registry],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, name: str, schema: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return str(path)


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    return str(tmp_path / "registry")


@pytest.fixture
def two_versions(registry_url: str) -> SchemaRegistry:
    registry = SchemaRegistry(ObjectStore(registry_url))
    registry.register(SUBJECT, V1)
    registry.register(SUBJECT, V2)
    return registry


def test_register_creates_a_version_then_reports_unchanged(tmp_path: Path, registry_url: str) -> None:
    file = write(tmp_path, "v1.json", V1)
    first = cdp("register", SUBJECT, file, registry=registry_url)
    again = cdp("register", SUBJECT, file, registry=registry_url)
    assert (first.returncode, again.returncode) == (0, 0)
    assert "registered acme/stripe/customers version 1" in first.stdout
    assert "unchanged: acme/stripe/customers version 1" in again.stdout


def test_register_accepts_a_singer_schema_message_on_stdin(registry_url: str) -> None:
    message = json.dumps({"type": "SCHEMA", "stream": "customers", "schema": V1, "key_properties": ["id"]})
    result = cdp("register", SUBJECT, "-", "--json", registry=registry_url, stdin=message)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1


def test_register_incompatible_exits_1_and_lists_violations(
    tmp_path: Path, registry_url: str, two_versions: SchemaRegistry
) -> None:
    result = cdp("register", SUBJECT, write(tmp_path, "bad.json", NARROWED), "--json", registry=registry_url)
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert payload["created"] is False
    assert sorted(v["path"] for v in payload["violations"]) == ["$.id", "$.phone"]
    assert "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert two_versions.versions(SUBJECT) == [1, 2]


def test_register_force_overrides_the_mode(tmp_path: Path, registry_url: str, two_versions: SchemaRegistry) -> None:
    result = cdp("register", SUBJECT, write(tmp_path, "bad.json", NARROWED), "--force", registry=registry_url)
    assert result.returncode == 0, result.stderr
    assert "force-registered acme/stripe/customers version 3" in result.stdout
    assert two_versions.get(SUBJECT, 3).forced


def test_check_compatible_exits_0(tmp_path: Path, registry_url: str, two_versions: SchemaRegistry) -> None:
    extended = {**V2, "properties": {**V2["properties"], "name": {"type": "string"}}}
    result = cdp("check", SUBJECT, write(tmp_path, "v3.json", extended), registry=registry_url)
    assert result.returncode == 0, result.stderr
    assert "compatible: acme/stripe/customers under ADDITIVE, checked against 2" in result.stdout


def test_check_incompatible_exits_1_and_prints_each_violation(
    tmp_path: Path, registry_url: str, two_versions: SchemaRegistry
) -> None:
    result = cdp("check", SUBJECT, write(tmp_path, "bad.json", NARROWED), registry=registry_url)
    assert result.returncode == 1
    assert "incompatible" in result.stdout
    assert "$.id (v2): type changed: version 2 has string, the new schema has integer" in result.stdout
    assert "$.phone (v2): property 'phone' removed" in result.stdout


def test_check_json_has_stable_keys(tmp_path: Path, registry_url: str, two_versions: SchemaRegistry) -> None:
    result = cdp("check", SUBJECT, write(tmp_path, "bad.json", NARROWED), "--json", registry=registry_url)
    payload = json.loads(result.stdout)
    assert set(payload) == {"subject", "compatible", "mode", "against_versions", "violations"}
    assert payload["compatible"] is False
    assert set(payload["violations"][0]) == {"path", "message", "rule", "version"}


def test_list_json(registry_url: str, two_versions: SchemaRegistry) -> None:
    result = cdp("list", "--json", registry=registry_url)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["subject"] == SUBJECT
    assert (row["latest_version"], row["versions"], row["mode"]) == (2, 2, "ADDITIVE")


def test_show_a_version_as_json(registry_url: str, two_versions: SchemaRegistry) -> None:
    result = cdp("show", SUBJECT, "--version", "1", "--json", registry=registry_url)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["version"], payload["versions"], payload["schema"]) == (1, [1, 2], {**V1, "$schema": DIALECT})


def test_show_missing_version_is_a_one_line_error(registry_url: str, two_versions: SchemaRegistry) -> None:
    result = cdp("show", SUBJECT, "--version", "9", registry=registry_url)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: subject 'acme/stripe/customers' has no version 9; versions are 1, 2"


def test_diff_between_versions(registry_url: str, two_versions: SchemaRegistry) -> None:
    text = cdp("diff", SUBJECT, registry=registry_url)
    as_json = cdp("diff", SUBJECT, "--from", "1", "--to", "2", "--json", registry=registry_url)
    assert "+ $.phone: property added" in text.stdout
    payload = json.loads(as_json.stdout)
    assert payload["changes"] == [
        {"path": "$.phone", "change": "added", "keyword": "property", "old": None, "new": {"type": ["null", "string"]}}
    ]


def test_diff_against_a_file(tmp_path: Path, registry_url: str, two_versions: SchemaRegistry) -> None:
    result = cdp("diff", SUBJECT, write(tmp_path, "bad.json", NARROWED), "--json", registry=registry_url)
    changes = json.loads(result.stdout)["changes"]
    assert [(c["path"], c["change"], c["keyword"]) for c in changes] == [
        ("$.id", "changed", "type"),
        ("$.phone", "removed", "property"),
    ]


def test_set_mode_changes_what_check_accepts(tmp_path: Path, registry_url: str, two_versions: SchemaRegistry) -> None:
    assert cdp("set-mode", SUBJECT, "none", registry=registry_url).returncode == 0
    assert two_versions.get_mode(SUBJECT) is CompatibilityMode.NONE
    assert cdp("check", SUBJECT, write(tmp_path, "bad.json", NARROWED), registry=registry_url).returncode == 0


def test_set_mode_rejects_an_unknown_mode_as_a_usage_error(registry_url: str) -> None:
    result = cdp("set-mode", SUBJECT, "sideways", registry=registry_url)
    assert result.returncode == 2
    assert "FULL_TRANSITIVE" in result.stderr


def test_malformed_subject_exits_1(registry_url: str) -> None:
    result = cdp("show", "acme/customers", registry=registry_url)
    assert result.returncode == 1
    assert "must be tenant/provider/stream" in result.stderr


def test_cli_works_against_an_s3_registry(tmp_path: Path, s3_url: str) -> None:
    result = cdp("register", SUBJECT, write(tmp_path, "v1.json", V1), "--json", registry=s3_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    assert SchemaRegistry(ObjectStore(s3_url)).versions(SUBJECT) == [1]
