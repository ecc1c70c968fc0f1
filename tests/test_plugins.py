"""Plugin discovery through the ``cdp`` entry-point group, and one test per hook (test_hook_<name>)."""

from __future__ import annotations

import importlib
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
from plugins.context import CdpContext
from plugins.descriptors import (
    Alert,
    Delivery,
    LoadMode,
    LoadRequest,
    MemberOutcome,
    PluginLoadError,
    RawInput,
    Severity,
    SourceDescriptor,
    TableInput,
    TargetDescriptor,
    TransformDescriptor,
    TransformGraphError,
    order_transforms,
)
from plugins.manager import (
    PluginHookError,
    UnknownPluginError,
    activators,
    alert_sinks,
    create_plugin_manager,
    describe_plugins,
    get_source,
    loaders,
    sources,
    targets,
    transforms,
)
from tests import plugin_examples

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
                return [SourceDescriptor(name="acme", tap="cdp_acme_tap:TapAcme", streams=["contacts"])]
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
    assert targets(pm) == {}


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
    assert infos["target-s3raw"].hooks == ["cdp_targets"]
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
        def cdp_sources(self, context: CdpContext) -> list[SourceDescriptor]:
            assert context.project_root is not None  # the tests run inside the project
            return [SourceDescriptor(name="demo", tap="taps.stripe.tap:TapStripe", streams=["customers"])]

    found = sources(_manager_with(Plugin()))
    assert list(found) == ["demo"]
    assert found["demo"].executable == "tap-demo"
    assert found["demo"].load_tap().name == "tap-stripe"
    stripe = get_source("stripe", create_plugin_manager())
    assert stripe.load_sandbox().__name__ == "create_sandbox"
    assert stripe.load_webhook_handler().provider == "stripe"


@pytest.mark.parametrize("provider", ["stripe", "shopify", "salesforce"])
def test_a_source_descriptor_lists_the_streams_its_tap_discovers(provider: str) -> None:
    source = get_source(provider, create_plugin_manager())
    tap_class = source.load_tap()
    if provider == "salesforce":
        from taps.salesforce.streams import DEFAULT_OBJECTS

        assert list(source.streams) == DEFAULT_OBJECTS
    else:
        stream_types = importlib.import_module(f"taps.{provider}.streams").STREAM_TYPES
        assert list(source.streams) == [stream.name for stream in stream_types]
    assert tap_class.name == f"tap-{provider}"


def test_hook_cdp_targets() -> None:
    found = targets(create_plugin_manager())
    assert found["s3raw"].executable == "target-s3raw"
    assert found["s3raw"].load_target().name == "target-s3raw"


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


def test_an_alert_raised_while_a_plugin_is_broken_still_reaches_the_built_in_and_extra_sinks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[Alert] = []

    class Recorder:
        name = "recorder"

        def send(self, alert: Alert) -> None:
            delivered.append(alert)

    class BrokenPlugin:
        @hookimpl
        def cdp_alert_sinks(self) -> list[object]:
            raise RuntimeError("pager settings missing")

    alert = Alert(kind="schema_drift", severity=Severity.WARNING, message="new property", tenant="acme")
    with caplog.at_level("INFO", logger="cdp.alerts"):
        raise_alert(alert, _manager_with(BrokenPlugin()), extra_sinks=[Recorder()])  # the pipeline goes on
    assert delivered == [alert]
    assert "alert.schema_drift" in caplog.text  # the built-in log sink
    assert "plugin 'test-plugin' failed in cdp_alert_sinks" in caplog.text


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
    assert "command group 'plugins' is ignored: a built-in command has that name" in result.stderr
    assert _cdp("plugins", "list", "--json", env=env).returncode == 0  # still the built-in `plugins`


def test_hook_cdp_transforms() -> None:
    ordered = transforms(_manager_with(plugin_examples))
    # customer_totals reads the tables of shop_customers and shop_orders, so it runs after both.
    assert [t.name for t in ordered] == ["shop_customers", "shop_orders", "customer_totals"]
    assert isinstance(plugin_examples.SEEN_CONTEXTS[-1], CdpContext)
    tables: dict[str, list[dict[str, object]]] = {}
    raw = {
        "contacts": [{"id": "c1", "email": " Ada@Example.COM "}, {"id": "c2", "email": "bo@example.com"}],
        "orders": [{"id": "o1", "contact_id": "c1", "amount": 5}, {"id": "o2", "contact_id": "c1", "amount": 7}],
    }
    for transform in ordered:
        arguments = {
            source.keyword if isinstance(source, RawInput) else source.table: (
                raw[source.stream] if isinstance(source, RawInput) else tables[source.table]
            )
            for source in transform.inputs
        }
        tables[transform.output] = transform.load_function()(**arguments)
    assert tables["shop_customers"][0] == {"customer_id": "c1", "email": "ada@example.com"}
    assert tables["customer_totals"] == [{"customer_id": "c1", "total": 12}, {"customer_id": "c2", "total": 0}]


def _transform(name: str, output: str, *tables: str) -> TransformDescriptor:
    return TransformDescriptor(
        name=name, inputs=[TableInput(t) for t in tables], output=output, key=["id"], function="x:y"
    )


def test_transforms_that_cannot_be_ordered_fail_with_one_line() -> None:
    with pytest.raises(TransformGraphError, match="reads table 'nowhere', which no transform writes"):
        order_transforms([_transform("a", "a", "nowhere")])
    with pytest.raises(TransformGraphError, match="cycle"):
        order_transforms([_transform("a", "a", "b"), _transform("b", "b", "a")])
    with pytest.raises(TransformGraphError, match="both write 'same'"):
        order_transforms([_transform("a", "same"), _transform("b", "same")])


def test_hook_cdp_loaders(tmp_path: Path) -> None:
    found = loaders(_manager_with(plugin_examples))
    snapshots = {7: [{"customer_id": "c1", "email": "ada@example.com"}]}
    loader = found["sqlite"].load_loader()(str(tmp_path / "store.db"), lambda table, snapshot: snapshots[snapshot])
    assert loader.loaded_snapshot("acme", "customers") is None
    result = loader.load(LoadRequest("acme", "customers", 7, None, LoadMode.FULL_REFRESH))
    assert (result.inserted, result.snapshot_id) == (1, 7)
    assert loader.loaded_snapshot("acme", "customers") == 7


def test_hook_cdp_activators(tmp_path: Path) -> None:
    jsonl = activators(_manager_with(plugin_examples))["jsonl"]
    assert jsonl.limits.max_batch_size == 2
    sender = jsonl.load_sender()(tmp_path / "audience.jsonl")
    deliveries = [
        Delivery("c1", {"customer_id": "c1", "email": "ada@example.com"}, "spring:c1:a"),
        Delivery("c2", {"customer_id": "c2"}, "spring:c2:a"),
    ]
    results = sender.add(deliveries)
    assert [r.outcome for r in results] == [MemberOutcome.ACCEPTED, MemberOutcome.REJECTED]
    assert results[1].reason == "no email"
    assert (tmp_path / "audience.jsonl").read_text().count("\n") == 1


def test_descriptors_import_their_implementation_only_when_used() -> None:
    code = textwrap.dedent(
        """
        import sys
        from plugins.manager import activators, create_plugin_manager, loaders, sources, targets, transforms
        from tests import plugin_examples

        pm = create_plugin_manager()
        pm.register(plugin_examples, name="examples")
        sources(pm), targets(pm), transforms(pm), loaders(pm), activators(pm)
        heavy = ("singer_sdk", "starlette", "uvicorn", "graphql", "psycopg", "pyspark", "jsonschema", "boto3")
        implementations = ("sandbox", "tap", "target", "plugin_examples.")
        print(sorted(m for m in sys.modules if m.startswith(heavy) or m.endswith(implementations)))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_descriptor_naming_a_missing_implementation_fails_with_one_line() -> None:
    source = SourceDescriptor(name="ghost", tap="ghost_package.tap:TapGhost", streams=[])
    with pytest.raises(PluginLoadError, match=r"cannot import 'ghost_package\.tap:TapGhost': ModuleNotFoundError"):
        source.load_tap()
    with pytest.raises(PluginLoadError, match="not an import path"):
        TargetDescriptor(name="x", target="no-colon").load_target()


def test_target_descriptor_names_its_executable() -> None:
    assert TargetDescriptor(name="x", target="targets.s3raw.target:TargetS3Raw").executable == "target-x"


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        (
            "def cdp_destinations():",
            "plugin 'target-old' (cdp_old) implements 'cdp_destinations', which is no cdp hook "
            "(it is cdp_targets now); the hooks: cdp_activators, cdp_alert_sinks,",
        ),
        (
            "def cdp_targets(ctx):",
            "plugin 'target-old' (cdp_old) failed to load: PluginValidationError: Plugin 'target-old' for hook "
            "'cdp_targets' hookimpl definition: cdp_targets(ctx) Argument(s) {'ctx'} are declared in the hookimpl",
        ),
    ],
)
def test_a_plugin_with_a_wrong_hook_is_named_in_one_line(tmp_path: Path, hook: str, expected: str) -> None:
    site = tmp_path / "site"
    (site / "cdp_old").mkdir(parents=True)
    (site / "cdp_old" / "__init__.py").write_text(f"from plugins import hookimpl\n\n@hookimpl\n{hook}\n    return []\n")
    dist = site / "cdp_old-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cdp-old\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cdp]\ntarget-old = cdp_old\n")
    result = _cdp("plugins", "list", env={"PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


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


def test_a_hook_that_raises_is_named_in_the_one_line_error() -> None:
    class Broken:
        @hookimpl
        def cdp_sources(self) -> list[SourceDescriptor]:
            raise RuntimeError("acme settings missing")

    pm = create_plugin_manager(only=["tap-stripe"])
    pm.register(Broken(), name="cdp-acme")
    with pytest.raises(PluginHookError, match=r"^plugin 'cdp-acme' failed in cdp_sources: RuntimeError: acme settings"):
        sources(pm)


def test_a_hook_returning_the_wrong_type_is_named_in_the_one_line_error() -> None:
    """A descriptor returned bare (not in a list), or a list holding something else, names the plugin that did it."""

    class Bare:
        @hookimpl
        def cdp_sources(self) -> SourceDescriptor:
            return SourceDescriptor(name="acme", tap="taps.stripe.tap:TapStripe", streams=["customers"])

    class Wrong:
        @hookimpl
        def cdp_transforms(self) -> list[str]:
            return ["transforms.acme:run"]

    pm = create_plugin_manager(only=["tap-stripe", "transform-orders"])
    pm.register(Bare(), name="cdp-bare")
    pm.register(Wrong(), name="cdp-wrong")
    with pytest.raises(PluginHookError, match=r"^plugin 'cdp-bare' returned a SourceDescriptor from cdp_sources"):
        sources(pm)
    with pytest.raises(PluginHookError, match=r"^plugin 'cdp-wrong' returned a list holding a str from cdp_transforms"):
        transforms(pm)
