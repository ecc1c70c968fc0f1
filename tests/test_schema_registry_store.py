"""The registry in an object store (local folder and S3): versions, idempotence, modes and concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from plugins.core.errors import ConfigError
from plugins.core.schema_dialect import DIALECT
from plugins.core.storage import ObjectStore
from schema_registry import (
    CompatibilityMode,
    IncompatibleSchemaError,
    InvalidSchemaError,
    InvalidSubjectError,
    SchemaRegistry,
    SubjectNotFoundError,
    normalize_schema,
    subject_name,
)
from tests.conftest import REPO_ROOT

SUBJECT = "acme/stripe/customers"
V1: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "email": {"type": ["string", "null"]}},
    "required": ["id"],
}


def with_property(schema: dict[str, Any], name: str, prop: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**schema, "properties": {**schema["properties"], name: prop or {"type": ["string", "null"]}}}


@pytest.fixture
def registry(store: ObjectStore) -> SchemaRegistry:
    return SchemaRegistry(store)


def test_subject_name_sanitises_the_stream_like_the_raw_zone() -> None:
    assert subject_name("acme", "stripe", "Customers-V2") == "acme/stripe/customers_v2"


def test_subject_name_rejects_a_bad_tenant() -> None:
    with pytest.raises(ConfigError, match="tenant"):
        subject_name("Acme Corp", "stripe", "customers")


def test_malformed_subject_is_rejected_with_the_expected_form(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidSubjectError, match="tenant/provider/stream"):
        registry.versions("acme/customers")


@pytest.mark.parametrize("subject", ["acme/stripe/customers\n", "acme\n/stripe/customers", "acme/stripe\n/customers"])
def test_subject_with_a_trailing_newline_is_refused(registry: SchemaRegistry, subject: str) -> None:
    with pytest.raises(InvalidSubjectError):
        registry.register(subject, V1)
    assert registry.subjects() == []


def test_version_file_name_with_a_trailing_newline_is_not_a_version(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))  # A local folder: S3 servers refuse such keys anyway.
    registry = SchemaRegistry(store)
    registry.register("acme/stripe/customers", V1)
    store.write_bytes("subjects/acme/stripe/customers/versions/000002.json\n", b"{}")
    assert registry.versions("acme/stripe/customers") == [1]


def test_first_registration_creates_version_1(registry: SchemaRegistry) -> None:
    result = registry.register(SUBJECT, V1)
    assert result.created
    assert result.version.version == 1
    assert registry.versions(SUBJECT) == [1]
    assert registry.subjects() == [SUBJECT]
    assert registry.get(SUBJECT, 1).schema == {**V1, "$schema": DIALECT}  # the dialect is always declared


def test_version_file_lives_under_the_subject_path(registry: SchemaRegistry, store: ObjectStore) -> None:
    registry.register(SUBJECT, V1)
    stored = orjson.loads(store.read_bytes("subjects/acme/stripe/customers/versions/000001.json"))
    assert stored["version"] == 1
    assert stored["schema"] == {**V1, "$schema": DIALECT}
    assert stored["dialect"] == DIALECT


def test_reregistering_the_same_schema_returns_the_existing_version(registry: SchemaRegistry) -> None:
    first = registry.register(SUBJECT, V1)
    again = registry.register(SUBJECT, V1)
    assert not again.created
    assert again.version == first.version
    assert registry.versions(SUBJECT) == [1]


def test_annotations_and_key_order_do_not_make_a_new_version(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    annotated = {
        "required": ["id"],
        "title": "Customer",
        "properties": {"email": {"type": ["null", "string"], "description": "e-mail"}, "id": {"type": "string"}},
        "type": "object",
    }
    result = registry.register(SUBJECT, annotated)
    assert not result.created
    assert result.version.version == 1


def test_compatible_change_creates_the_next_version(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    result = registry.register(SUBJECT, with_property(V1, "phone"))
    assert result.created
    assert result.version.version == 2
    latest = registry.latest(SUBJECT)
    assert latest is not None
    assert latest.version == 2


def test_incompatible_change_is_refused_and_not_stored(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    narrowed = with_property(V1, "email", {"type": "string"})
    with pytest.raises(IncompatibleSchemaError) as caught:
        registry.register(SUBJECT, narrowed)
    assert [v.path for v in caught.value.violations] == ["$.email"]
    assert "--force" in str(caught.value)
    assert registry.versions(SUBJECT) == [1]


def test_force_registers_an_incompatible_schema_and_marks_it(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    narrowed = with_property(V1, "email", {"type": "string"})
    result = registry.register(SUBJECT, narrowed, force=True)
    assert result.created
    assert result.version.forced
    assert registry.get(SUBJECT, 2).forced


def test_check_reports_violations_without_registering(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    result = registry.check(SUBJECT, {"type": "object", "properties": {"id": {"type": "integer"}}})
    assert not result.compatible
    assert result.mode is CompatibilityMode.ADDITIVE
    assert result.against_versions == [1]
    assert sorted(v.path for v in result.violations) == ["$.email", "$.id"]
    assert registry.versions(SUBJECT) == [1]


def test_check_of_a_new_subject_is_compatible(registry: SchemaRegistry) -> None:
    result = registry.check("acme/stripe/invoices", V1)
    assert result.compatible
    assert result.against_versions == []


def test_unknown_subject_has_no_versions(registry: SchemaRegistry) -> None:
    assert registry.versions("acme/stripe/nothing") == []
    assert registry.latest("acme/stripe/nothing") is None


def test_missing_version_error_lists_existing_versions(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    with pytest.raises(SubjectNotFoundError, match="versions are 1"):
        registry.get(SUBJECT, 7)


def test_invalid_json_schema_is_rejected(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidSchemaError, match="type"):
        registry.register(SUBJECT, {"type": "objekt"})


def test_mode_defaults_to_additive(registry: SchemaRegistry) -> None:
    assert registry.get_mode(SUBJECT) is CompatibilityMode.ADDITIVE


def test_set_mode_persists_and_changes_the_check(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)
    registry.set_mode(SUBJECT, "backward")
    assert SchemaRegistry(registry.store).get_mode(SUBJECT) is CompatibilityMode.BACKWARD
    without_email = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    assert registry.register(SUBJECT, without_email).version.version == 2


def test_registry_wide_default_mode_applies_to_subjects_without_their_own(registry: SchemaRegistry) -> None:
    registry.set_default_mode(CompatibilityMode.NONE)
    registry.set_mode("acme/stripe/invoices", CompatibilityMode.FULL)
    assert registry.get_mode(SUBJECT) is CompatibilityMode.NONE
    assert registry.get_mode("acme/stripe/invoices") is CompatibilityMode.FULL


def test_transitive_mode_refuses_a_change_incompatible_with_an_older_version(registry: SchemaRegistry) -> None:
    registry.set_mode(SUBJECT, CompatibilityMode.BACKWARD_TRANSITIVE)
    registry.register(SUBJECT, with_property(V1, "x", {"type": "integer"}))
    registry.register(SUBJECT, V1)
    with pytest.raises(IncompatibleSchemaError) as caught:
        registry.register(SUBJECT, with_property(V1, "x", {"type": "string"}))
    assert [(v.path, v.version) for v in caught.value.violations] == [("$.x", 1)]


def test_reverting_to_an_earlier_schema_makes_it_the_latest_again(registry: SchemaRegistry) -> None:
    registry.set_mode(SUBJECT, CompatibilityMode.BACKWARD)
    registry.register(SUBJECT, V1)
    registry.register(SUBJECT, with_property(V1, "phone"))
    result = registry.register(SUBJECT, V1)
    assert result.version.version == 3
    assert result.version.fingerprint == registry.get(SUBJECT, 1).fingerprint


def _run_threads(count: int, work: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_registration_of_one_schema_creates_one_version(registry: SchemaRegistry) -> None:
    results = _run_threads(8, lambda _i: registry.register(SUBJECT, V1))
    assert sum(r.created for r in results) == 1
    assert {r.version.version for r in results} == {1}
    assert registry.versions(SUBJECT) == [1]


def test_concurrent_compatible_schemas_each_get_their_own_version(registry: SchemaRegistry) -> None:
    registry.set_mode(SUBJECT, CompatibilityMode.BACKWARD)
    registry.register(SUBJECT, V1)
    schemas = [with_property(V1, f"field_{i}") for i in range(6)]
    results = _run_threads(6, lambda i: registry.register(SUBJECT, schemas[i]))
    assert sorted(r.version.version for r in results) == [2, 3, 4, 5, 6, 7]
    stored = [normalize_schema(v.schema) for v in registry.all_versions(SUBJECT)[1:]]
    assert sorted(orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in stored) == sorted(
        orjson.dumps(normalize_schema(s), option=orjson.OPT_SORT_KEYS) for s in schemas
    )


def test_a_writer_that_loses_the_race_rechecks_against_the_winner(registry: SchemaRegistry) -> None:
    registry.register(SUBJECT, V1)  # ADDITIVE: once one new field wins, dropping it again is incompatible.
    schemas = [with_property(V1, f"field_{i}") for i in range(4)]
    results = _run_threads(4, lambda i: registry.register(SUBJECT, schemas[i]))
    created = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, IncompatibleSchemaError)]
    assert len(created) == 1
    assert len(refused) == 3
    assert registry.versions(SUBJECT) == [1, 2]
    assert all(v.rule == "property_removed" for r in refused for v in r.violations)


_WORKER = textwrap.dedent(
    """
    import sys
    from plugins.core.storage import ObjectStore
    from schema_registry import SchemaRegistry
    url, worker = sys.argv[1], int(sys.argv[2])
    registry = SchemaRegistry(ObjectStore(url))
    base = {"type": "object", "properties": {"id": {"type": "string"}}}
    for n in range(5):
        props = {**base["properties"], f"w{worker}_{n}": {"type": "string"}}
        result = registry.register("acme/stripe/customers", {**base, "properties": props})
        print(result.version.version, flush=True)
    """
)


def test_concurrent_registration_from_processes_never_loses_or_overwrites(store_url: str, tmp_path: Path) -> None:
    registry = SchemaRegistry(ObjectStore(store_url))
    registry.set_mode(SUBJECT, CompatibilityMode.BACKWARD)
    registry.register(SUBJECT, {"type": "object", "properties": {"id": {"type": "string"}}})
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), store_url, str(w)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        for w in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    reported = sorted(int(line) for out in outputs for line in out.split())
    assert reported == list(range(2, 17))
    assert registry.versions(SUBJECT) == list(range(1, 17))
    added = {next(iter(set(v.schema["properties"]) - {"id"})) for v in registry.all_versions(SUBJECT)[1:]}
    assert added == {f"w{w}_{n}" for w in range(3) for n in range(5)}
