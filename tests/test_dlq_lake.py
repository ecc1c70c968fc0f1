"""One base URL for every zone (``--lake-url`` / ``CDP_LAKE_URL``), and reports that say which store each figure
came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from plugins.cli.app import main
from plugins.core.dead_letters import FieldError
from plugins.core.raw_zone import RawZoneWriter
from plugins.core.storage import ObjectStore
from plugins.core.zones import LAKE_ENV_VAR, Zone, resolve_zone_url
from schema_registry import SchemaRegistry
from tests.dlq_helpers import SCHEMA_V2, SUBJECT, Zones, customer, failing_batch, validation_letter, write_letters


@pytest.fixture(autouse=True)
def _no_zone_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (LAKE_ENV_VAR, *(zone.env_var for zone in Zone)):
        monkeypatch.delenv(name, raising=False)


def _json(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


@pytest.mark.parametrize("zone", list(Zone))
def test_each_zone_is_a_prefix_of_the_lake_unless_set_on_its_own(zone: Zone, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_zone_url(zone, lake="s3://lake/prod/") == f"s3://lake/prod/{zone.value}"
    monkeypatch.setenv(LAKE_ENV_VAR, "s3://lake/env")
    assert resolve_zone_url(zone) == f"s3://lake/env/{zone.value}"
    assert resolve_zone_url(zone, lake="/cli-lake") == f"/cli-lake/{zone.value}"  # the option beats the environment
    monkeypatch.setenv(zone.env_var, "s3://own/zone")
    assert resolve_zone_url(zone, lake="/cli-lake") == "s3://own/zone"  # a zone set on its own always wins
    assert resolve_zone_url(zone, "/explicit", lake="/cli-lake") == "/explicit"


def _stocked_lake(lake: str) -> Zones:
    zones = Zones.under(lake)
    failing_batch(zones.dlq, fixable=3, broken=2)
    RawZoneWriter(zones.raw, tenant="acme", provider="stripe").write_batch("customers", [customer(n) for n in range(7)])
    return zones


def test_stats_with_a_lake_counts_raw_and_dlq_from_the_lake_and_names_both_stores(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    zones = _stocked_lake(store_url)
    monkeypatch.chdir(tmp_path)  # a local data/raw here must not be counted
    RawZoneWriter(ObjectStore("data/raw"), tenant="acme", provider="stripe").write_batch("customers", [customer(99)])

    stats = _json(["dlq", "stats", "--lake-url", store_url], capsys)

    (rate,) = stats["providers"]
    assert (rate["raw_records"], rate["dlq_records"]) == (7, 5)
    assert stats["stores"] == {"dlq": zones.dlq.url_for(""), "raw": zones.raw.url_for("")}

    monkeypatch.setenv(LAKE_ENV_VAR, store_url)
    assert _json(["dlq", "stats"], capsys)["stores"] == stats["stores"]

    other_raw = str(tmp_path / "elsewhere" / "raw")
    mixed = _json(["dlq", "stats", "--raw-url", other_raw], capsys)  # set on its own: wins, and the report says so
    assert mixed["stores"] == {"dlq": zones.dlq.url_for(""), "raw": ObjectStore(other_raw).url_for("")}
    assert mixed["providers"][0]["raw_records"] == 0


def test_every_dlq_report_names_its_stores_in_text_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = str(tmp_path / "lake")
    zones = _stocked_lake(lake)
    SchemaRegistry(zones.registry).register(SUBJECT, SCHEMA_V2)
    (key,) = write_letters(zones.dlq, [validation_letter(customer(5), [FieldError("$", "x")])], tenant="globex")
    dlq, raw, registry = (zones.dlq.url_for(""), zones.raw.url_for(""), zones.registry.url_for(""))
    lake_option = ["--lake-url", lake]
    commands: list[tuple[list[str], dict[str, str]]] = [
        (["dlq", "list"], {"dlq": dlq}),
        (["dlq", "show", key], {"dlq": dlq}),
        (["dlq", "stats"], {"dlq": dlq, "raw": raw}),
        (["dlq", "reprocess", "--tenant", "acme", "--dry-run"], {"dlq": dlq, "raw": raw, "registry": registry}),
        (["dlq", "purge", "--older-than", "30d", "--dry-run"], {"dlq": dlq}),
        (["dlq", "audit"], {"dlq": dlq}),
        (["dlq", "alert", "--threshold", "100"], {"dlq": dlq}),
    ]
    for args, stores in commands:
        assert _json([*args, *lake_option], capsys)["stores"] == stores, args
        capsys.readouterr()
        assert main([*args, *lake_option]) == 0, args
        text = capsys.readouterr().out
        line = next(line for line in text.splitlines() if line.startswith("stores: "))
        assert line == "stores: " + "; ".join(f"{zone} {url}" for zone, url in stores.items()), args
