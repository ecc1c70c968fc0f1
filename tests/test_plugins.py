"""Plugin discovery through the ``cdp`` entry-point group, and one test per hook (test_hook_<name>)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pluggy
import pytest

from plugins import hookimpl
from plugins.alerts import LogAlertSink, raise_alert
from plugins.descriptors import (
    Alert,
    DestinationDescriptor,
    LoaderDescriptor,
    Severity,
    SourceDescriptor,
    TransformDescriptor,
)
from plugins.manager import (
    UnknownPluginError,
    alert_sinks,
    create_plugin_manager,
    describe_plugins,
    destinations,
    get_source,
    sources,
)

BUILT_INS = {"cdp-alerts-log", "tap-stripe", "target-s3raw"}


def _cdp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cdp"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def third_party_package(tmp_path: Path) -> Path:
    """An installed-looking third-party package with a ``cdp`` entry point, on a path of its own."""
    site = tmp_path / "site"
    (site / "cdp_acme_tap").mkdir(parents=True)
    (site / "cdp_acme_tap" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from singer_sdk import Tap
            from plugins import hookimpl
            from plugins.descriptors import SourceDescriptor

            class TapAcme(Tap):
                name = "tap-acme"
                config_jsonschema = {"type": "object", "properties": {}}
                def discover_streams(self):
                    return []

            @hookimpl
            def cdp_sources():
                return [SourceDescriptor(name="acme", tap_class=TapAcme, streams=["contacts"])]
            """
        )
    )
    dist = site / "cdp_acme_tap-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cdp-acme-tap\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[cdp]\ntap-acme = cdp_acme_tap\n")
    return site


def test_built_in_plugins_load_from_the_entry_point_group() -> None:
    pm = create_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert names >= BUILT_INS
    # Built-ins come in exactly as a third-party distribution would: with their distribution's metadata.
    assert {dist.project_name for _, dist in pm.list_plugin_distinfo()} >= {"cdp-connectors"}


def test_cdp_plugins_restricts_what_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_PLUGINS", "tap-stripe, cdp-alerts-log")
    pm = create_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} == {"tap-stripe", "cdp-alerts-log"}
    assert destinations(pm) == {}


def test_cdp_plugins_naming_an_unknown_plugin_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_PLUGINS", "tap-nosuch")
    with pytest.raises(UnknownPluginError, match="CDP_PLUGINS names 'tap-nosuch'"):
        create_plugin_manager()


def test_a_third_party_package_is_found_like_the_built_ins(third_party_package: Path) -> None:
    result = _cdp("plugins", "list", "--json", env={"PYTHONPATH": str(third_party_package)})
    assert result.returncode == 0, result.stderr
    plugins = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert plugins["tap-acme"] == {
        "name": "tap-acme",
        "kinds": ["source"],
        "module": "cdp_acme_tap",
        "distribution": "cdp-acme-tap",
        "version": "1.2.3",
        "hooks": ["cdp_sources"],
    }
    assert set(plugins) >= BUILT_INS


def test_describe_plugins_reports_kinds_versions_and_hooks() -> None:
    infos = {info.name: info for info in describe_plugins(create_plugin_manager())}
    assert infos["tap-stripe"].kinds == ["source"]
    assert infos["tap-stripe"].module == "taps.stripe"
    assert infos["target-s3raw"].hooks == ["cdp_destinations"]
    assert infos["tap-stripe"].version == "0.1.0"


def test_unknown_source_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPluginError, match=r"no source plugin named 'nosuch' \(known: .*stripe"):
        get_source("nosuch", create_plugin_manager())


# One test per hook: the hook is called and its results reach the framework.


def _manager_with(plugin: ModuleType | object) -> pluggy.PluginManager:
    pm = create_plugin_manager(only=[])
    pm.register(plugin, name="test-plugin")
    return pm


def test_hook_cdp_sources() -> None:
    class Plugin:
        @hookimpl
        def cdp_sources(self) -> list[SourceDescriptor]:
            from taps.stripe.tap import TapStripe

            return [SourceDescriptor(name="demo", tap_class=TapStripe, streams=["customers"])]

    found = sources(_manager_with(Plugin()))
    assert list(found) == ["demo"]
    assert found["demo"].executable == "tap-demo"
    assert get_source("stripe", create_plugin_manager()).sandbox is not None


def test_hook_cdp_destinations() -> None:
    found = destinations(create_plugin_manager())
    assert found["s3raw"].executable == "target-s3raw"
    assert found["s3raw"].target_class.name == "target-s3raw"


def test_hook_cdp_alert_sinks(caplog: pytest.LogCaptureFixture) -> None:
    delivered: list[Alert] = []

    class Recorder:
        name = "recorder"

        def send(self, alert: Alert) -> None:
            delivered.append(alert)

    class Broken:
        name = "broken"

        def send(self, alert: Alert) -> None:
            raise ConnectionError("chat service down")

    class Plugin:
        @hookimpl
        def cdp_alert_sinks(self) -> list[object]:
            return [Broken(), Recorder(), LogAlertSink()]

    pm = _manager_with(Plugin())
    assert [sink.name for sink in alert_sinks(pm)] == ["broken", "recorder", "log"]
    alert = Alert(
        kind="schema_drift",
        severity=Severity.INFO,
        message="new property",
        tenant="acme",
        details={"tenant": "shadowed?", "property": "nickname"},
    )
    with caplog.at_level("INFO", logger="cdp.alerts"):
        raise_alert(alert, pm)
    assert delivered == [alert]  # a broken sink does not stop the others
    assert "alert sink 'broken' failed" in caplog.text
    assert "alert.schema_drift" in caplog.text
    assert '"details":{"tenant":"shadowed?","property":"nickname"}' in caplog.text


def test_hook_cdp_commands() -> None:
    import typer

    from plugins.descriptors import CommandGroup
    from plugins.manager import command_groups

    group_app = typer.Typer()

    class Plugin:
        @hookimpl
        def cdp_commands(self) -> list[CommandGroup]:
            return [CommandGroup(name="acme", app=group_app)]

    assert command_groups(_manager_with(Plugin()))["acme"].app is group_app
    assert "webhooks" in command_groups(create_plugin_manager())  # tap-webhooks adds `cdp webhooks`


def test_plugin_commands_run_from_the_cli_and_cannot_shadow_built_ins(third_party_package: Path) -> None:
    module = third_party_package / "cdp_acme_tap" / "__init__.py"
    module.write_text(
        module.read_text()
        + textwrap.dedent(
            """
            import typer
            from plugins.descriptors import CommandGroup

            acme = typer.Typer()

            @acme.command("ping")
            def ping() -> None:
                print("pong")

            @acme.command("other")
            def other() -> None:
                print("other")

            @hookimpl
            def cdp_commands():
                return [CommandGroup(name="acme", app=acme), CommandGroup(name="plugins", app=acme)]
            """
        )
    )
    env = {"PYTHONPATH": str(third_party_package)}
    result = _cdp("acme", "ping", env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "pong")
    assert _cdp("plugins", "list", "--json", env=env).returncode == 0  # still the built-in `plugins`


def test_hook_cdp_transforms() -> None:
    class Plugin:
        @hookimpl
        def cdp_transforms(self) -> list[TransformDescriptor]:
            return [TransformDescriptor(name="unify", run=lambda: "ran")]

    results = _manager_with(Plugin()).hook.cdp_transforms()
    assert [t.name for group in results for t in group] == ["unify"]
    assert results[0][0].run() == "ran"


def test_hook_cdp_loaders() -> None:
    class Plugin:
        @hookimpl
        def cdp_loaders(self) -> list[LoaderDescriptor]:
            return [LoaderDescriptor(name="postgres", run=lambda: "loaded")]

    results = _manager_with(Plugin()).hook.cdp_loaders()
    assert [loader.name for group in results for loader in group] == ["postgres"]


def test_destination_descriptor_names_its_executable() -> None:
    from targets.s3raw.target import TargetS3Raw

    assert DestinationDescriptor(name="x", target_class=TargetS3Raw).executable == "target-x"


def test_a_plugin_that_fails_to_import_is_named_in_the_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "cdp_broken").mkdir(parents=True)
    (site / "cdp_broken" / "__init__.py").write_text("import module_that_does_not_exist\n")
    dist = site / "cdp_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cdp-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cdp]\ntap-broken = cdp_broken\n")
    result = _cdp("plugins", "list", env={"PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert "plugin 'tap-broken' (cdp_broken) failed to load: ModuleNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr
