"""``cdp dlq list|show|stats|alert|purge|audit`` on local and S3 stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pluggy
import pytest

from plugins.cli.app import main
from plugins.core.dead_letters import DeadLetter, ErrorType, FieldError
from plugins.core.errors import ConfigError
from plugins.core.raw_zone import RawZoneWriter
from plugins.core.redaction import RecordMasker
from plugins.descriptors import Alert
from plugins.dlq.ops import RETIRED_PREFIX, DlqFilter, check_dlq_volume, list_batches, show_batch
from plugins.hookspecs import hookimpl
from plugins.manager import create_plugin_manager
from tests.dlq_helpers import STREAM, Zones, customer, failing_batch, validation_letter, write_letters

OLD = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def zones(store_url: str) -> Zones:
    return Zones.under(store_url)


def _json(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def _seed(zones: Zones) -> dict[str, str]:
    """Batches across tenants, providers, error types, streams and days."""
    return {
        "acme_customers": failing_batch(zones.dlq, fixable=3, broken=2),
        "acme_old": write_letters(zones.dlq, [validation_letter(customer(1), [FieldError("$", "x")])], when=OLD)[0],
        "acme_charges": write_letters(
            zones.dlq, [validation_letter(customer(2), [FieldError("$", "y")], stream="charges")]
        )[0],
        "globex": write_letters(
            zones.dlq, [validation_letter(customer(3), [FieldError("$", "z")])] * 4, tenant="globex"
        )[0],
        "acme_extraction": write_letters(
            zones.dlq,
            [DeadLetter(ErrorType.EXTRACTION_FAILED, "500 Server Error", STREAM, {"method": "GET"})],
        )[0],
    }


def test_list_filters_by_tenant_provider_error_type_stream_and_since_with_record_counts(zones: Zones, capsys) -> None:
    keys = _seed(zones)
    dlq = ["--dlq-url", zones.dlq.url]

    everything = _json(["dlq", "list", *dlq], capsys)
    acme_customers = _json(["dlq", "list", *dlq, "--tenant", "acme", "--stream", "customers"], capsys)
    recent_validation = _json(
        ["dlq", "list", *dlq, "--error-type", "schema_validation", "--since", "7d", "--provider", "stripe"], capsys
    )

    assert everything["records"] == 5 + 1 + 1 + 4 + 1
    assert {b["key"] for b in acme_customers["batches"]} == {
        keys["acme_customers"],
        keys["acme_old"],
        keys["acme_extraction"],
    }
    assert {b["key"]: b["records"] for b in recent_validation["batches"]} == {
        keys["acme_customers"]: 5,
        keys["acme_charges"]: 1,
        keys["globex"]: 4,
    }


def test_list_ignores_retired_batches_and_audit_objects(zones: Zones) -> None:
    keys = _seed(zones)
    zones.dlq.move(keys["globex"], f"{RETIRED_PREFIX}/{keys['globex']}")
    zones.dlq.write_bytes("_audit/year=2026/month=01/day=01/x.json", b"{}")

    listed = {b.key for b in list_batches(zones.dlq)}

    assert keys["globex"] not in listed
    assert len(listed) == 4


def test_unknown_error_type_fails_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="--error-type"):
        DlqFilter(error_type="oops")


def test_show_groups_errors_by_path_and_message_with_counts(zones: Zones) -> None:
    letters = [
        validation_letter(customer(n), [FieldError("$.amount", "'x' is not of type 'integer'")]) for n in range(3)
    ]
    letters.append(
        validation_letter(
            customer(7), [FieldError("$.amount", "'x' is not of type 'integer'"), FieldError("$", "'id' is required")]
        )
    )
    (key,) = write_letters(zones.dlq, letters)

    report = show_batch(zones.dlq, key)

    assert [(g.path, g.message, g.count) for g in report.groups] == [
        ("$.amount", "'x' is not of type 'integer'", 4),
        ("$", "'id' is required", 1),
    ]
    assert report.groups[1].example_line == 4
    assert report.batch.record_count == 4
    assert report.batch.size_bytes == len(zones.dlq.read_bytes(key))


def test_show_masks_secrets_default_pii_and_configured_fields(zones: Zones, monkeypatch, capsys) -> None:
    record = {
        "id": "cus_1",
        "email": "jane@example.com",
        "shipping": {"address": {"city": "Paris", "line1": "1 rue X"}, "loyalty_no": "L-998"},
        "api_key": "sk_live_abcdef",
        "note": "called with Bearer abc.def and https://x.test/?access_token=zzz",
        "amount": "12",
    }
    (key,) = write_letters(zones.dlq, [validation_letter(record, [FieldError("$.amount", "not an integer")])])
    monkeypatch.setenv("CDP_PII_FIELDS", "loyalty_no")

    shown = _json(["dlq", "show", key, "--dlq-url", zones.dlq.url, "--mask-field", "id"], capsys)
    example = shown["groups"][0]["example_record"]
    text = orjson.dumps(shown).decode()

    assert example["email"] == "***"
    assert example["shipping"] == {"address": {"city": "***", "line1": "***"}, "loyalty_no": "***"}
    assert example["api_key"] == "***"
    assert example["id"] == "***"
    assert example["amount"] == "12"
    for secret in ("jane@example.com", "sk_live_abcdef", "abc.def", "zzz", "L-998", "Paris"):
        assert secret not in text


def test_masker_without_configuration_keeps_ordinary_fields() -> None:
    masked = RecordMasker.configured().mask({"plan": "gold", "token_count": 3, "items": [{"name": "n"}]})
    assert masked == {"plan": "gold", "token_count": "***", "items": [{"name": "***"}]}


def test_stats_counts_by_dimension_and_success_rate_per_provider(zones: Zones, capsys) -> None:
    _seed(zones)
    RawZoneWriter(zones.raw, tenant="acme", provider="stripe").write_batch(
        "customers", [customer(n) for n in range(18)]
    )
    RawZoneWriter(zones.raw, tenant="acme", provider="stripe").write_batch("customers", [customer(1)], when=OLD)

    stats = _json(["dlq", "stats", "--since", "24h", "--dlq-url", zones.dlq.url, "--raw-url", zones.raw.url], capsys)

    by = {(r["tenant"], r["error_type"], r["stream"]): r["records"] for r in stats["by_stream"]}
    assert by == {
        ("acme", "schema_validation", "customers"): 5,
        ("acme", "schema_validation", "charges"): 1,
        ("acme", "extraction_failed", "customers"): 1,
        ("globex", "schema_validation", "customers"): 4,
    }
    rates = {p["tenant"]: p for p in stats["providers"]}
    assert rates["acme"]["raw_records"] == 18
    assert rates["acme"]["dlq_records"] == 6
    assert rates["acme"]["failed_requests"] == 1
    assert rates["acme"]["success_rate"] == pytest.approx(18 / 24)
    assert rates["globex"]["success_rate"] == 0.0


class _Collector:
    name = "collector"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def test_volume_over_threshold_raises_an_alert_per_tenant_and_provider(zones: Zones, caplog) -> None:
    _seed(zones)
    collector = _Collector()

    class _Plugin:
        @hookimpl
        def cdp_alert_sinks(self) -> list[_Collector]:
            return [collector]

    pm: pluggy.PluginManager = create_plugin_manager()
    pm.register(_Plugin())

    breaches = check_dlq_volume(zones.dlq, threshold=5, window=timedelta(hours=1), pm=pm)

    assert [(b.tenant, b.provider, b.records) for b in breaches] == [("acme", "stripe", 7)]  # globex has 4
    (alert,) = collector.alerts
    assert (alert.kind, alert.tenant, alert.provider) == ("dlq_volume", "acme", "stripe")
    assert alert.details["by_error_type"] == {"extraction_failed": 1, "schema_validation": 6}
    assert "alert.dlq_volume" in caplog.text  # the built-in log sink delivered it too
    assert "failed to deliver" not in caplog.text


def test_volume_alert_window_excludes_older_batches(zones: Zones) -> None:
    write_letters(zones.dlq, [validation_letter(customer(n), [FieldError("$", "x")]) for n in range(9)], when=OLD)
    assert check_dlq_volume(zones.dlq, threshold=1, window=timedelta(days=1)) == []


def test_purge_deletes_only_batches_older_than_the_limit_and_audits(zones: Zones, capsys) -> None:
    keys = _seed(zones)
    zones.dlq.write_bytes(f"{RETIRED_PREFIX}/{keys['acme_old']}x", b"")  # not a batch key: never touched
    old_retired = write_letters(zones.dlq, [validation_letter(customer(5), [FieldError("$", "x")])], when=OLD)[0]
    zones.dlq.move(old_retired, f"{RETIRED_PREFIX}/{old_retired}")

    result = _json(
        ["dlq", "purge", "--older-than", "30d", "--yes", "--dlq-url", zones.dlq.url, "--actor", "bob"], capsys
    )

    assert result["batches"] == [keys["acme_old"]]
    assert result["retired_copies"] == [f"{RETIRED_PREFIX}/{old_retired}"]
    assert not zones.dlq.exists(keys["acme_old"])
    assert len(list_batches(zones.dlq)) == 4
    audit = _json(["dlq", "audit", "--dlq-url", zones.dlq.url, "--action", "purge"], capsys)["entries"]
    assert [(e["actor"], e["counts_before"]["dlq_records"], e["counts_after"]["dlq_records"]) for e in audit] == [
        ("bob", 1, 0)
    ]


def test_purge_leaves_a_batch_a_running_reprocess_holds(zones: Zones, capsys) -> None:
    from plugins.core.leases import Lease, LeaseManager
    from plugins.dlq.ops import REPROCESS_LEASE_PREFIX

    held_key, free_key = (
        write_letters(zones.dlq, [validation_letter(customer(n), [FieldError("$", "x")])], when=OLD)[0] for n in (1, 2)
    )
    lease = LeaseManager(zones.dlq, REPROCESS_LEASE_PREFIX, run_id="run_live").acquire(held_key)  # this live process
    assert isinstance(lease, Lease)

    result = _json(["dlq", "purge", "--older-than", "30d", "--yes", "--dlq-url", zones.dlq.url], capsys)

    assert (result["batches"], result["held"], result["records"]) == ([free_key], [held_key], 1)
    assert zones.dlq.exists(held_key)
    assert not zones.dlq.exists(free_key)
    (entry,) = _json(["dlq", "audit", "--dlq-url", zones.dlq.url, "--action", "purge"], capsys)["entries"]
    assert entry["batches"] == [free_key]


def test_purge_dry_run_deletes_nothing(zones: Zones, capsys) -> None:
    keys = _seed(zones)
    result = _json(["dlq", "purge", "--older-than", "30d", "--dry-run", "--dlq-url", zones.dlq.url], capsys)
    assert result["batches"] == [keys["acme_old"]]
    assert zones.dlq.exists(keys["acme_old"])


def test_purge_without_a_terminal_needs_yes(zones: Zones, capsys) -> None:
    keys = _seed(zones)
    assert main(["dlq", "purge", "--older-than", "30d", "--dlq-url", zones.dlq.url]) == 1
    assert "--yes" in capsys.readouterr().err
    assert zones.dlq.exists(keys["acme_old"])


def test_purge_without_older_than_is_a_usage_error(zones: Zones) -> None:
    assert main(["dlq", "purge", "--yes", "--dlq-url", zones.dlq.url]) == 2


def test_bad_duration_fails_naming_the_option(zones: Zones, capsys) -> None:
    assert main(["dlq", "alert", "--window", "yesterday", "--dlq-url", zones.dlq.url]) == 1
    assert "--window" in capsys.readouterr().err


def test_every_read_command_prints_a_table_for_people(zones: Zones, capsys) -> None:
    keys = _seed(zones)
    dlq = ["--dlq-url", zones.dlq.url]
    commands = [
        ["dlq", "list", *dlq],
        ["dlq", "show", keys["acme_customers"], *dlq],
        ["dlq", "stats", *dlq, "--raw-url", zones.raw.url],
        ["dlq", "audit", *dlq],
        ["dlq", "alert", "--threshold", "5", "--window", "1h", *dlq],
    ]
    for command in commands:
        capsys.readouterr()
        assert main(command) == 0, command
        out = capsys.readouterr().out
        assert out.strip(), command
    assert "ALERT dlq_volume acme/stripe: 7 entries" in out


def test_show_of_an_unknown_batch_fails_in_one_line(zones: Zones, capsys) -> None:
    assert main(["dlq", "show", "acme/nope.ndjson.gz", "--dlq-url", zones.dlq.url]) == 1
    assert "not a DLQ batch key" in capsys.readouterr().err


def test_show_merges_one_problem_with_different_values_into_one_group(zones: Zones) -> None:
    letters = [
        validation_letter(customer(n, amount=f"{n}00"), [FieldError("$.amount", f'"{n}00" is not of type "integer"')])
        for n in (1, 2, 3)
    ]
    letters.append(validation_letter(customer(4, email=None), [FieldError("$.email", 'null is not of type "string"')]))
    (key,) = write_letters(zones.dlq, letters)

    groups = [(g.path, g.message, g.count) for g in show_batch(zones.dlq, key).groups]

    assert groups == [
        ("$.amount", '<value> is not of type "integer"', 3),
        ("$.email", 'null is not of type "string"', 1),
    ]
