"""Webhooks end to end: HTTP POST to the receiver, drained by the real tap-webhooks and target-s3raw processes (and by
Meltano) into the raw zone; and `cdp webhooks serve` killed with SIGKILL under load loses nothing it acknowledged."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from plugins.cli.app import main
from plugins.connectors.sandbox import SandboxServer
from plugins.connectors.testing import announced_url, wait_until
from plugins.core.layout import parse_batch_key
from plugins.meltano.project import find_project_root, run_meltano
from plugins.webhooks.file_log import FileWebhookLog
from plugins.webhooks.receiver import UVICORN_OPTIONS, ReceiverSettings, WebhookReceiver
from taps.stripe.webhook import StripeWebhookHandler

BIN = Path(sys.executable).parent
SECRET = "whsec_pipeline"
# Subprocesses load only the plugins they need (CDP_PLUGINS), which keeps their start-up short.
ENV = {**os.environ, "CDP_WEBHOOK_SECRET__ACME__STRIPE": SECRET, "CDP_PLUGINS": "tap-stripe,tap-webhooks"}


class ReceiverProcess:
    """`cdp webhooks serve` in its own process, on a port it picks (``--port 0``) and prints."""

    def __init__(self, tmp_path: Path) -> None:
        command = [
            str(BIN / "cdp"), "webhooks", "serve", "--port", "0", "--log-url", str(tmp_path / "log"),
            "--dlq-url", str(tmp_path / "dlq"), "--rate", "0", "--compact-interval", "0",
        ]  # fmt: skip
        output = tmp_path / f"receiver-{time.monotonic_ns()}.out"  # One per start: a restart prints its own URL.
        with output.open("wb") as stdout:
            self.process = subprocess.Popen(command, env=ENV, stdout=stdout, stderr=subprocess.STDOUT)
        self.url = announced_url(self.process, output)
        # Its lifespan opens the log before the first request is served, so healthz is the first answer.
        assert httpx.get(self.url + "/healthz", timeout=30).status_code == 200

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Any]:
    started: list[ReceiverProcess] = []

    def start() -> ReceiverProcess:
        started.append(ReceiverProcess(tmp_path))
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def receiver_in_thread(tmp_path: Path) -> Iterator[str]:
    """The receiver app on uvicorn in a thread of the test process (its lifespan opens and closes the log)."""
    log = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)  # Small preallocated files: tests add up.
    settings = ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ={"CDP_WEBHOOK_SECRET__ACME__STRIPE": SECRET})
    app = WebhookReceiver(log, {"stripe": StripeWebhookHandler()}, settings).app()
    with SandboxServer(app, **UVICORN_OPTIONS) as server:
        yield server.url


def stripe_event(event_id: str) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": "charge.succeeded", "data": {"object": {}}}).encode()


def post_event(client: httpx.Client, url: str, event_id: str) -> int:
    body = stripe_event(event_id)
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
    return client.post(f"{url}/webhooks/acme/stripe", content=body, headers={"Stripe-Signature": header}).status_code


def drain(tmp_path: Path, state: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """tap-webhooks | target-s3raw, as Meltano wires them; returns the last STATE the target confirmed."""
    tap_config = tmp_path / "tap.json"
    tap_config.write_text(json.dumps({"provider": "stripe", "tenant": "acme", "log_url": str(tmp_path / "log")}))
    target_config = tmp_path / "target.json"
    target_config.write_text(
        json.dumps(
            {
                "raw_url": str(tmp_path / "raw"),
                "dlq_url": str(tmp_path / "dlq"),
                "registry_url": str(tmp_path / "registry"),
                "tenant": "acme",
                "provider": "stripe",
            }
        )
    )
    tap_command = [str(BIN / "tap-webhooks"), "--config", str(tap_config)]
    if state is not None:
        state_file = tmp_path / "state.json"
        state_file.write_text(json.dumps(state))
        tap_command += ["--state", str(state_file)]
    tap = subprocess.Popen(tap_command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    target = subprocess.run(
        [str(BIN / "target-s3raw"), "--config", str(target_config)],
        stdin=tap.stdout,
        capture_output=True,
        env=ENV,
        check=True,
        timeout=120,
    )
    assert tap.wait(60) == 0
    states = [json.loads(line) for line in target.stdout.decode().splitlines() if line.strip()]
    return states[-1] if states else None


def raw_records(tmp_path: Path) -> list[dict[str, Any]]:
    records = []
    for batch in sorted((tmp_path / "raw").rglob("*.ndjson.gz")):
        records += [json.loads(line) for line in zlib.decompress(batch.read_bytes(), 31).splitlines() if line]
    return records


def test_posted_events_land_in_the_raw_zone_once_and_the_bookmark_follows_the_target(
    tmp_path: Path, receiver_in_thread: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with httpx.Client() as client:
        statuses = [
            post_event(client, receiver_in_thread, event_id) for event_id in ("evt_1", "evt_2", "evt_1", "evt_3")
        ]
    assert statuses == [200, 200, 200, 200]
    state = drain(tmp_path)
    records = raw_records(tmp_path)
    assert sorted(record["_webhook_event_id"] for record in records) == ["evt_1", "evt_2", "evt_3"]
    assert {record["_webhook_topic"] for record in records} == {"charge.succeeded"}
    assert all(record["object"] == "event" and record["_sdc_batched_at"] for record in records)
    assert next(key.parent.name for key in (tmp_path / "raw").rglob("*.ndjson.gz")).startswith("day=")
    assert state is not None
    bookmark = state["bookmarks"]["webhook_events"]["replication_key_value"]
    assert bookmark == max(record["_webhook_log_position"] for record in records)

    with httpx.Client() as client:
        assert post_event(client, receiver_in_thread, "evt_4") == 200
    drain(tmp_path, state)  # The next run starts after the confirmed bookmark and commits it for compaction.
    assert sorted(record["_webhook_event_id"] for record in raw_records(tmp_path)) == [
        "evt_1",
        "evt_2",
        "evt_3",
        "evt_4",
    ]
    assert main(["webhooks", "consumers", "--log-url", str(tmp_path / "log"), "--json"]) == 0
    consumers = capsys.readouterr().out
    assert json.loads(consumers) == {
        "consumers": [{"consumer": "acme/stripe/events", "position": bookmark, "valid": True, "problem": None}]
    }


def test_sigkill_under_load_loses_no_acknowledged_event_and_lands_each_once(
    tmp_path: Path, start_receiver: Any
) -> None:
    receiver = start_receiver()
    acknowledged: list[str] = []
    unacknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=5) as client:
            for index in range(2000):
                if stop.is_set():
                    return
                event_id = f"evt_{worker}_{index}"
                try:
                    ok = 200 <= post_event(client, receiver.url, event_id) < 300
                except httpx.TransportError:
                    ok = False
                with lock:
                    (acknowledged if ok else unacknowledged).append(event_id)
                if not ok:
                    return  # The receiver is gone; the provider will retry this one.

    workers = [threading.Thread(target=load, args=(worker,)) for worker in range(6)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(acknowledged) >= 200, 20, "200 acknowledged events")
    receiver.kill()  # SIGKILL mid-load: some requests are in flight, some written but not yet acknowledged.
    stop.set()
    for worker in workers:
        worker.join(10)
    assert len(acknowledged) >= 200

    restarted = start_receiver()
    with httpx.Client() as client:  # The provider retries what it never got a 2xx for, and redelivers a few others.
        for event_id in unacknowledged + acknowledged[:25]:
            assert post_event(client, restarted.url, event_id) == 200
    restarted.stop()
    drain(tmp_path)

    landed = Counter(record["_webhook_event_id"] for record in raw_records(tmp_path))
    expected = set(acknowledged) | set(unacknowledged)
    assert set(landed) == expected
    assert set(acknowledged) <= set(landed)  # Every acknowledged event is there ...
    assert max(landed.values()) == 1  # ... exactly once.
    print(f"crash test: {len(acknowledged)} acknowledged before SIGKILL, {len(unacknowledged)} retried, "
          f"{sum(landed.values())} in the raw zone")  # fmt: skip


@pytest.mark.meltano
def test_meltano_runs_the_stripe_webhook_drain_into_the_raw_zone(tmp_path: Path, receiver_in_thread: str) -> None:
    with httpx.Client() as client:
        assert post_event(client, receiver_in_thread, "evt_meltano") == 200
    extra_env = {
        "CDP_PLUGINS": ENV["CDP_PLUGINS"],
        "MELTANO_STATE_BACKEND_URI": f"file://{tmp_path / 'state'}",
        "TAP_WEBHOOKS_LOG_URL": str(tmp_path / "log"),
        "TAP_WEBHOOKS_TENANT": "acme",
        "TARGET_S3RAW_RAW_URL": str(tmp_path / "raw"),
        "TARGET_S3RAW_DLQ_URL": str(tmp_path / "dlq"),
        "TARGET_S3RAW_REGISTRY_URL": str(tmp_path / "registry"),
        "TARGET_S3RAW_TENANT": "acme",
        "TARGET_S3RAW_PROVIDER": "stripe",
    }
    run_meltano(
        ["run", "tap-webhooks--stripe", "target-s3raw"],
        project_root=find_project_root(Path(__file__).parent),
        extra_env=extra_env,
        capture=True,
        timeout=180,
    )
    assert [record["_webhook_event_id"] for record in raw_records(tmp_path)] == ["evt_meltano"]
    assert list((tmp_path / "state").rglob("state.json"))  # Meltano kept the state the target confirmed.


def test_a_drain_with_a_bookmark_from_a_recreated_log_fails_in_one_line_and_commits_nothing(
    tmp_path: Path, receiver_in_thread: str
) -> None:
    other_log = "wold000000000000:00000000000000000042"  # A position of a log that no longer exists.
    stale = {
        "bookmarks": {
            "webhook_events": {"replication_key": "_webhook_log_position", "replication_key_value": other_log}
        }
    }
    with httpx.Client() as client:
        assert post_event(client, receiver_in_thread, "evt_after_recreate") == 200
    (tmp_path / "tap.json").write_text(
        json.dumps({"provider": "stripe", "tenant": "acme", "log_url": str(tmp_path / "log")})
    )
    (tmp_path / "state.json").write_text(json.dumps(stale))
    tap = subprocess.run(
        [str(BIN / "tap-webhooks"), "--config", str(tmp_path / "tap.json"), "--state", str(tmp_path / "state.json")],
        env=ENV, capture_output=True, timeout=120,
    )  # fmt: skip
    assert tap.returncode == 1
    assert b'"type":"RECORD"' not in tap.stdout.replace(b" ", b"")
    errors = [line for line in tap.stderr.decode().splitlines() if "another webhook log" in line]
    assert len(errors) == 1
    assert "reset the extractor's state (docs/webhooks.md)" in errors[0]
    assert "Traceback" not in tap.stderr.decode()
    assert FileWebhookLog(tmp_path / "log").consumers() == {}  # The stale position was not recorded as committed.


@pytest.mark.meltano
def test_shipped_meltano_yml_lands_tap_stripe_events_and_drained_webhooks_side_by_side_with_nothing_in_the_dlq(
    tmp_path: Path, receiver_in_thread: str
) -> None:
    from plugins.connectors.sandbox import SandboxOptions
    from taps.stripe.sandbox import create_sandbox

    with httpx.Client() as client:
        for index in range(3):
            assert post_event(client, receiver_in_thread, f"evt_pushed_{index}") == 200
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(find_project_root(Path(__file__).parent) / "meltano.yml", project / "meltano.yml")
    with SandboxServer(create_sandbox(SandboxOptions(records=20))) as sandbox:
        env = {
            "CDP_PLUGINS": ENV["CDP_PLUGINS"],
            "TAP_STRIPE_API_URL": sandbox.url,
            "TAP_STRIPE__SELECT": '["events.*"]',
            "TAP_STRIPE_TENANT": "acme",
            "TAP_WEBHOOKS_TENANT": "acme",
            "TAP_WEBHOOKS_LOG_URL": str(tmp_path / "log"),
        }
        for extractor in ("tap-stripe", "tap-webhooks--stripe"):  # The batch extraction first, as after `make demo`.
            run_meltano(["run", extractor, "target-s3raw"], project_root=project, extra_env=env, timeout=240)
    landed: Counter[str] = Counter()
    for batch in (project / "data" / "raw").rglob("*.ndjson.gz"):
        landed[parse_batch_key(str(batch.relative_to(project / "data" / "raw"))).stream] += len(
            zlib.decompress(batch.read_bytes(), 31).splitlines()
        )
    assert landed["events"] > 0
    assert landed["webhook_events"] == 3
    assert list((project / "data" / "dlq").rglob("*.ndjson.gz")) == []
    registry = project / "data" / "registry"
    subjects = {"/".join(path.relative_to(registry / "subjects").parts[:3]) for path in registry.rglob("*.json")}
    assert {"acme/stripe/events", "acme/stripe/webhook_events"} <= subjects  # One subject each, both compatible.


def test_tap_webhooks_names_the_setting_when_the_provider_has_no_webhook_handler(tmp_path: Path) -> None:
    from plugins.core.errors import ConfigError
    from taps.webhooks.tap import TapWebhooks

    with pytest.raises(ConfigError, match="setting 'provider'"):
        TapWebhooks(config={"provider": "paypal", "tenant": "acme", "log_url": str(tmp_path)})


@pytest.mark.parametrize("provider", ["stripe", "shopify", "salesforce"])
def test_drained_streams_never_share_a_name_with_the_providers_batch_tap(tmp_path: Path, provider: str) -> None:
    from plugins.manager import get_source
    from taps.webhooks.tap import TapWebhooks

    tap = TapWebhooks(config={"provider": provider, "tenant": "acme", "log_url": str(tmp_path)})
    drained = {stream.name for stream in tap.discover_streams()}
    assert drained
    assert all(name.startswith("webhook_") for name in drained)
    assert not drained & set(get_source(provider).streams)  # Same provider folder, distinct registry subjects.


def test_tap_webhooks_records_its_tenant_and_refuses_another_tenants_state(tmp_path: Path) -> None:
    # Positions are shared by every tenant of the log: acme's bookmark would make beta skip its own earlier events.
    from plugins.connectors.tap_runtime import StateTenantMismatchError
    from taps.webhooks.tap import TapWebhooks

    config = {"provider": "stripe", "tenant": "acme", "log_url": str(tmp_path)}
    assert TapWebhooks(config=config).state["tenant"] == "acme"
    acme_state = {"tenant": "acme", "bookmarks": {"webhook_events": {"replication_key_value": "00000000000000000008"}}}
    with pytest.raises(
        StateTenantMismatchError, match="written for tenant 'acme', but this run extracts tenant 'beta'"
    ):
        TapWebhooks(config={**config, "tenant": "beta"}, state=acme_state)
