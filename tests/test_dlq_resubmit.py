"""``cdp dlq resubmit``: failed extractions re-run through the real tap with real Meltano, retired on success."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from plugins.cli.app import main
from plugins.connectors.sandbox import SandboxServer
from plugins.core.dead_letters import DeadLetter, ErrorType, FieldError
from plugins.core.storage import ObjectStore
from plugins.dlq.ops import RETIRED_PREFIX, list_batches
from plugins.dlq.resubmit import Resubmitter
from tests.dlq_helpers import all_rows, customer, validation_letter, write_letters

pytestmark = pytest.mark.meltano

# A minimal Meltano project: the two plugins resubmit drives, with the settings it passes through the environment.
MELTANO_YML = """\
version: 1
project_id: 2f8d7f0e-6a53-4f55-9a52-6d1c3f7b9e11
send_anonymous_usage_stats: false
default_environment: dev
state_backend:
  uri: file://$MELTANO_PROJECT_ROOT/.meltano/state
plugins:
  extractors:
    - name: tap-stripe
      namespace: tap_stripe
      executable: tap-stripe
      capabilities: [catalog, discover, state, about]
      settings:
        - {name: api_key, kind: string, sensitive: true}
        - {name: api_url, kind: string}
        - {name: tenant, kind: string}
        - {name: dlq_url, kind: string}
  loaders:
    - name: target-s3raw
      namespace: target_s3raw
      executable: target-s3raw
      settings:
        - {name: raw_url, kind: string}
        - {name: dlq_url, kind: string}
        - {name: registry_url, kind: string}
        - {name: tenant, kind: string}
        - {name: provider, kind: string}
environments:
  - name: dev
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "meltano.yml").write_text(MELTANO_YML)
    return root


def _extraction_failure(stream: str, bookmark: dict[str, object] | None) -> DeadLetter:
    return DeadLetter(
        error_type=ErrorType.EXTRACTION_FAILED,
        error_message="500 Server Error for /v1/customers",
        stream=stream,
        record={"method": "GET", "url": "http://127.0.0.1/v1/customers", "params": {"limit": 100}},
        context={"stream": stream, "bookmark": bookmark, "attempts": 4, "status": 500},
    )


def _resubmitter(project: Path, dlq: ObjectStore, raw_url: str, sandbox_url: str) -> Resubmitter:
    return Resubmitter(
        dlq,
        project_root=project,
        actor="carol",
        raw_url=raw_url,
        extra_env={
            "TAP_STRIPE_API_KEY": "sk_test_cdp_sandbox",
            "TAP_STRIPE_API_URL": sandbox_url,
            "TARGET_S3RAW_REGISTRY_URL": str(project / "registry"),
        },
        timeout=240,
    )


def test_resubmit_reruns_the_failed_stream_from_its_bookmark_and_retires_the_entry(
    project: Path, stripe_sandbox: SandboxServer, store_url: str
) -> None:
    dlq = ObjectStore(f"{store_url}/dlq")
    raw_url = f"{store_url}/raw"
    everyone = stripe_sandbox.app.state.stripe.objects["customers"]  # type: ignore[attr-defined]
    created = sorted(int(c["created"]) for c in everyone)
    bookmark_value = created[len(created) // 2]
    expected = sum(1 for value in created if value >= bookmark_value)
    (source,) = write_letters(
        dlq,
        [_extraction_failure("customers", {"replication_key": "created", "replication_key_value": bookmark_value})],
        tenant="acme",
    )

    report = _resubmitter(project, dlq, raw_url, stripe_sandbox.url).run([source])

    assert report.ok, report.as_dict()
    landed = all_rows(ObjectStore(raw_url), "acme/stripe")
    assert {r["_sdc_extracted_at"] is not None for r in landed} == {True}
    assert len(landed) == expected < len(created)  # only the failed window, from the bookmark on
    assert list_batches(dlq) == []
    assert dlq.exists(f"{RETIRED_PREFIX}/{source}")
    audit = [orjson.loads(dlq.read_bytes(i.key)) for i in dlq.list("_audit")]
    assert [(a["action"], a["actor"], a["counts_after"]["retired_batches"]) for a in audit] == [
        ("resubmit", "carol", 1)
    ]


def test_failed_resubmit_leaves_the_batch_in_the_dlq(project: Path, stripe_sandbox: SandboxServer) -> None:
    dlq = ObjectStore(str(project / "dlq"))
    (source,) = write_letters(dlq, [_extraction_failure("customers", None)], tenant="acme")
    resubmitter = _resubmitter(project, dlq, str(project / "raw"), stripe_sandbox.url)
    resubmitter.extra_env["TAP_STRIPE_API_KEY"] = "sk_test_not_the_right_key"  # the credentials are not fixed yet

    report = resubmitter.run([source])

    assert not report.ok
    assert source in [b.key for b in list_batches(dlq)]
    assert "stays in the DLQ" in report.outcomes[0].message
    audit = [orjson.loads(dlq.read_bytes(i.key)) for i in dlq.list("_audit")]
    assert [(a["outcome"], a["counts_after"]["retired_batches"]) for a in audit] == [("partial", 0)]


def test_dry_run_prints_the_meltano_command_and_runs_nothing(project: Path, store: ObjectStore) -> None:
    dlq = store
    (source,) = write_letters(dlq, [_extraction_failure("charges", {"replication_key_value": 5})], tenant="acme")

    report = Resubmitter(dlq, project_root=project, actor="x").run([source], dry_run=True)

    (command,) = report.outcomes[0].commands
    assert command[:8] == ["meltano", "--environment", "dev", "el", "tap-stripe", "target-s3raw", "--select", "charges"]
    assert report.audit_key is None
    assert dlq.exists(source)


def test_a_batch_another_live_run_holds_is_skipped_with_a_note(project: Path, store: ObjectStore) -> None:
    from plugins.core.leases import Lease, LeaseManager
    from plugins.dlq.ops import RESUBMIT_LEASE_PREFIX

    (source,) = write_letters(store, [_extraction_failure("charges", None)], tenant="acme")
    held = LeaseManager(store, RESUBMIT_LEASE_PREFIX, run_id="run_other").acquire(source)  # a live run (this pid)
    assert isinstance(held, Lease)
    calls: list[list[str]] = []

    report = Resubmitter(store, project_root=project, actor="x", runner=lambda c, **_: calls.append(c)).run([source])

    (outcome,) = report.outcomes
    assert outcome.status == "skipped"
    assert "held by run run_other" in outcome.message
    assert calls == []  # the window is not extracted a second time
    assert store.exists(source)
    held.release()
    again = Resubmitter(store, project_root=project, actor="x", runner=lambda c, **_: calls.append(c)).run([source])
    assert [o.status for o in again.outcomes] == ["resubmitted"]
    assert len(calls) == 1


def test_record_batches_are_refused_with_a_pointer_to_reprocess(project: Path, store: ObjectStore) -> None:
    dlq = store
    (source,) = write_letters(dlq, [validation_letter(customer(1), [FieldError("$", "x")])])

    report = Resubmitter(dlq, project_root=project, actor="x").run([source])

    assert "reprocess" in report.outcomes[0].message


def test_cli_resubmit_by_filter_picks_only_failed_requests(project: Path, monkeypatch, capsys) -> None:
    dlq = ObjectStore(str(project / "dlq"))
    (request,) = write_letters(dlq, [_extraction_failure("customers", None)], tenant="acme")
    write_letters(dlq, [validation_letter(customer(1), [FieldError("$", "x")])], tenant="acme")
    monkeypatch.chdir(project)

    assert main(["dlq", "resubmit", "--tenant", "acme", "--dry-run", "--dlq-url", dlq.url, "--json"]) == 0

    report = orjson.loads(capsys.readouterr().out)
    assert [b["source"] for b in report["batches"]] == [request]
    assert report["batches"][0]["status"] == "dry_run"
