"""The first pipeline, run by real Meltano: tap-stripe against its sandbox into target-s3raw, local and S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from plugins.connectors.sandbox import SandboxServer
from plugins.core.layout import parse_batch_key
from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore
from plugins.meltano.project import MeltanoError, run_meltano
from schema_registry import SchemaRegistry
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.meltano


@pytest.fixture
def meltano_project(tmp_path: Path) -> Path:
    """A copy of the repository's meltano.yml in a fresh folder: state and data stay out of the working tree."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / "meltano.yml", project / "meltano.yml")
    return project


def _run(project: Path, sandbox: SandboxServer, raw_url: str | None = None) -> None:
    # Only customers: tap-stripe has nine streams; this test is about the pipeline and its state, not the tap.
    env = {"TAP_STRIPE_API_URL": sandbox.url, "TAP_STRIPE__SELECT": '["customers.*"]'}
    if raw_url:
        env["TARGET_S3RAW_RAW_URL"] = raw_url
    run_meltano(["run", "tap-stripe", "target-s3raw"], project_root=project, extra_env=env, capture=True, timeout=240)


def _landed(store: ObjectStore) -> dict[str, list[dict]]:
    batches: dict[str, list[dict]] = {}
    for info in store.list("demo/stripe"):
        batches[info.key] = read_batch(store, info.key)
    return batches


def test_meltano_run_lands_every_sandbox_record_locally_then_resumes_from_state(
    meltano_project: Path, stripe_sandbox: SandboxServer
) -> None:
    _run(meltano_project, stripe_sandbox)
    store = ObjectStore(str(meltano_project / "data" / "raw"))
    first = _landed(store)
    assert len(first) == 1
    ((key, records),) = first.items()
    assert parse_batch_key(key).stream == "customers"
    assert len(records) == 250
    assert len({r["id"] for r in records}) == 250
    record = records[0]
    assert {"_sdc_extracted_at", "_sdc_received_at", "_sdc_batched_at", "_sdc_sequence", "_cdp_schema_version"} <= set(
        record
    )
    assert record["object"] == "customer"  # the record's own properties land unchanged
    assert (meltano_project / ".meltano" / "state").is_dir()

    # A second run starts from the bookmark (tap-stripe checkpoints after each complete 'created' window, past the
    # newest customer), so nothing comes again.
    _run(meltano_project, stripe_sandbox)
    second = {k: v for k, v in _landed(store).items() if k not in first}
    assert sum(len(v) for v in second.values()) == 0


def test_meltano_run_lands_records_on_s3(meltano_project: Path, stripe_sandbox: SandboxServer, s3_url: str) -> None:
    _run(meltano_project, stripe_sandbox, raw_url=s3_url)
    store = ObjectStore(s3_url)
    batches = _landed(store)
    assert sum(len(records) for records in batches.values()) == 250
    assert all(key.startswith("demo/stripe/year=") for key in batches)


def test_meltano_run_fails_when_a_stream_lands_nothing_and_keeps_the_state_it_emitted(
    meltano_project: Path, stripe_sandbox: SandboxServer
) -> None:
    # A registered customers schema the tap's cannot follow (id: string -> integer): every record goes to the DLQ.
    registry = SchemaRegistry(ObjectStore(str(meltano_project / "data" / "registry")))
    registry.register(
        "demo/stripe/customers",
        {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
    )

    with pytest.raises(MeltanoError, match=r"every record of stream\(s\) customers went to the DLQ"):
        _run(meltano_project, stripe_sandbox)

    dlq = ObjectStore(str(meltano_project / "data" / "dlq"))
    assert sum(len(read_batch(dlq, info.key)) for info in dlq.list("demo/stripe/schema_incompatible")) == 250
    assert (
        not (meltano_project / "data" / "raw").exists()
        or ObjectStore(str(meltano_project / "data" / "raw")).list() == []
    )
    state = run_meltano(
        ["state", "get", "dev:tap-stripe-to-target-s3raw"], project_root=meltano_project, capture=True, timeout=120
    )
    # Meltano kept the STATE the target emitted before exiting 1: the next run does not extract them again.
    bookmarks = json.loads(state.stdout)["singer_state"]["bookmarks"]
    assert bookmarks["customers"]["replication_key"] == "created"
