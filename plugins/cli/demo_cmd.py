"""``cdp demo``: the pipeline on embedded defaults, from local Stripe, Shopify and Salesforce sandboxes to served
customers: the taps land raw batches through Meltano, the transforms build the processed zone's tables, and the loaders
keep the embedded PostgreSQL and the search emulator in step with them; then a segment, campaigns to each
activation destination's sandbox, signed feedback and the campaign metrics (plugins/cli/demo_activation.py)."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from plugins.cli.output import console, styled
from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from plugins.core.errors import CdpError
from plugins.core.layout import BATCH_SUFFIX, parse_batch_key
from plugins.core.raw_zone import read_batch
from plugins.core.redaction import redact_url
from plugins.core.storage import ObjectStore
from plugins.manager import get_source
from plugins.meltano.project import MELTANO_FILE, environment_bin, find_project_root, meltano_env, run_meltano

DEMO_TENANT = "demo"
DEMO_SOURCES = ("stripe", "shopify", "salesforce")
#: The Meltano utility (namespace cdp) whose ``transform`` command runs ``cdp transform run``.
TRANSFORM_UTILITY = "cdp"
TRANSFORM_COMMAND = f"{TRANSFORM_UTILITY}:transform"
LOAD_COMMAND = f"{TRANSFORM_UTILITY}:load"
#: The sandboxes write North American numbers in national format ("(212) 555-0123"); this region reads them.
DEMO_DEFAULT_REGION = "US"


class DemoError(CdpError):
    """The demo ran but left something it cannot show (nothing landed, a table is missing)."""


@dataclass(frozen=True)
class UnifiedCustomers:
    """What the processed zone says about people: profiles, the records behind them, and those spanning providers."""

    customers: int
    records: int
    cross_provider: int


def demo(
    records: Annotated[int, typer.Option(help="Synthetic records per sandbox resource.")] = 500,
) -> None:
    """Sandboxes to served customers and campaign results: three providers through meltano run, the transforms,
    PostgreSQL and search, then a segment, campaigns to the destinations' sandboxes, feedback and metrics."""
    root = find_project_root()
    zones = _zone_env(root)
    from plugins.cli.demo_activation import ACTIVATION_STEPS, run_activation

    with_utility = has_transform_utility(root)
    pipeline_steps = 2 if with_utility else 4
    started = datetime.now(UTC).replace(microsecond=0)
    with ExitStack() as stack:
        sandbox_env: dict[str, str] = {}
        serving = []
        for name in DEMO_SOURCES:
            source = get_source(name)
            server = stack.enter_context(SandboxServer(source.load_sandbox()(SandboxOptions(records=records))))
            sandbox_env.update(sandbox_settings(name, server.url))
            serving.append(f"{name} {server.url}")
        stores = start_local_stores(stack, root)
        # Activation needs the profile store: segments are computed in PostgreSQL.
        steps = pipeline_steps + (ACTIVATION_STEPS if "postgres" in stores else 0)
        console.print(
            styled((f"1/{steps}", "bold"), f" sandboxes with {records} records per resource, one population of people")
        )
        console.print("    " + "  ".join(serving))
        console.print("    stores: " + "  ".join(f"{name} {redact_url(url)}" for name, url in stores.items()))
        store_env = {variable: url for variable, url in _store_variables(stores).items()}
        command = ["run"]
        for name in DEMO_SOURCES:
            command += [get_source(name).executable, "target-s3raw"]
        if with_utility:
            command += [TRANSFORM_COMMAND, LOAD_COMMAND]
        console.print(styled((f"2/{steps}", "bold"), f" meltano {' '.join(command)} (environment dev)"))
        # Meltano logs only warnings and errors: the demo prints what happened below.
        run_meltano(
            ["--log-level", "warning", *command], project_root=root, extra_env={**sandbox_env, **zones, **store_env}
        )
        _print_raw_zone(root, started)
        _print_landing_zone_summary(root)
        if not with_utility:
            console.print(styled((f"3/{steps}", "bold"), f" cdp transform run --tenant {DEMO_TENANT}"))
            run_cdp_command(root, ["transform", "run", "--tenant", DEMO_TENANT], zones)
            console.print(styled((f"4/{steps}", "bold"), f" cdp load run --tenant {DEMO_TENANT}"))
            run_cdp_command(root, ["load", "run", "--tenant", DEMO_TENANT], {**zones, **store_env})
        unified = read_unified_customers(root / "data" / "processed", DEMO_TENANT)
        console.print(
            styled(("unified customers: ", "bold"), str(unified.customers))
            + f" profiles from {unified.records} source records; {unified.cross_provider} merged across providers"
            " (records from 2 or 3 of Stripe, Shopify, Salesforce)"
        )
        if "postgres" in stores:
            _print_top_customers(stores["postgres"])
        if "elasticsearch" in stores:
            _print_search(stores["elasticsearch"], stores.get("postgres"))
        if "postgres" in stores:
            run_activation(root, stack, stores["postgres"], {**zones, **store_env}, pipeline_steps + 1, steps)
    console.print(
        "Re-running is safe: each tap resumes from its bookmark in .meltano/state, the transforms read only raw files "
        "they have not processed and the loads only snapshots they have not loaded, so a second run finds nothing new "
        "and shows the same counts. The embedded PostgreSQL keeps running (cdp db status, cdp db stop)."
    )


def start_local_stores(stack: ExitStack, root: Path) -> dict[str, str]:
    """Each registered loader's local stand-in (embedded PostgreSQL, the search emulator), by loader name, with its
    data under ``data/<loader>``; a loader whose stand-in is not installed is left out with a note."""
    from plugins.manager import loaders

    stores: dict[str, str] = {}
    for name, loader in sorted(loaders().items()):
        if loader.local_server is None or loader.url_env_var is None:
            continue
        try:
            stores[name] = stack.enter_context(loader.load_local_server()(root / "data" / name))
        except CdpError as exc:
            console.print(f"    {name}: not started ({exc}); the demo does without it", highlight=False)
    return stores


def _store_variables(stores: dict[str, str]) -> dict[str, str]:
    from plugins.manager import loaders

    registered = loaders()
    return {str(registered[name].url_env_var): url for name, url in stores.items()}


def sandbox_settings(source: str, url: str) -> dict[str, str]:
    """The Meltano settings (as env vars) that point a tap at its local sandbox instead of the provider."""
    settings = {
        "stripe": {"TAP_STRIPE_API_URL": url},
        "shopify": {"TAP_SHOPIFY_API_URL": url},
        "salesforce": {"TAP_SALESFORCE_TOKEN_URL": f"{url}/services/oauth2/token"},
    }
    return settings[source]


def _zone_env(root: Path) -> dict[str, str]:
    """Every zone under the project's data/ folder, for the transforms (the taps' target has them in meltano.yml)."""
    data = root / "data"
    return {
        "CDP_RAW_URL": str(data / "raw"),
        "CDP_DLQ_URL": str(data / "dlq"),
        "CDP_REGISTRY_URL": str(data / "registry"),
        "CDP_PROCESSED_URL": str(data / "processed"),
        "CDP_DEFAULT_REGION": os.environ.get("CDP_DEFAULT_REGION", DEMO_DEFAULT_REGION),
    }


def has_transform_utility(root: Path) -> bool:
    """Whether meltano.yml declares the ``cdp`` utility, so transforms run inside ``meltano run`` as cdp:transform."""
    project: Any = yaml.safe_load((root / MELTANO_FILE).read_text(encoding="utf-8")) or {}
    utilities = (project.get("plugins") or {}).get("utilities") or []
    return any(isinstance(plugin, dict) and plugin.get("name") == TRANSFORM_UTILITY for plugin in utilities)


def run_cdp_command(root: Path, arguments: list[str], env: dict[str, str]) -> None:
    """``cdp ARGUMENTS`` in a process of its own (the transforms start Spark); it prints its own summary."""
    command = [str(environment_bin() / "cdp"), *arguments]
    result = subprocess.run(command, cwd=root, env=meltano_env(env), check=False)
    if result.returncode != 0:
        raise DemoError(f"'cdp {' '.join(arguments)}' exited with {result.returncode}; its error is printed above")


def _print_top_customers(postgres_url: str) -> None:
    """The query an application would run: unified customers with their metrics, from the profile store."""
    import psycopg
    from psycopg import sql

    tenant = sql.Identifier(DEMO_TENANT)
    query = sql.SQL(
        "SELECT c.customer_id, c.full_name, c.email, array_length(c.sources, 1) AS sources, m.currency, "
        "round(m.lifetime_value, 2), m.order_count FROM {}.customers c "
        "LEFT JOIN {}.customer_metrics m USING (customer_id) "
        "ORDER BY m.lifetime_value DESC NULLS LAST, c.customer_id LIMIT 5"
    ).format(tenant, tenant)
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(query).fetchall()
    table = Table(title=f"PostgreSQL {DEMO_TENANT}.customers joined to customer_metrics, top lifetime value")
    for column in ("customer_id", "name", "email", "providers", "currency", "lifetime value", "orders"):
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    console.print(table)


def _print_search(es_url: str, postgres_url: str | None) -> None:
    """A customer search in the search store: a name, as a support agent would type it."""
    from elasticsearch import Elasticsearch

    alias = f"{DEMO_TENANT}_customers"
    with Elasticsearch(es_url) as client:
        sample = client.search(index=alias, size=1, query={"exists": {"field": "last_name"}}, sort=["customer_id"])
        hits = sample["hits"]["hits"]
        if not hits:
            console.print(f"search ({alias}): no customer with a name to search for")
            return
        name = hits[0]["_source"]["last_name"]
        found = client.search(index=alias, size=3, query={"match": {"full_name": name}})
    total = found["hits"]["total"]["value"]
    shown = ", ".join(
        f"{hit['_source'].get('full_name')} <{hit['_source'].get('email')}>" for hit in found["hits"]["hits"]
    )
    console.print(f"search {alias} for '{name}': {total} customers; first: {shown}", highlight=False)


def read_unified_customers(processed: Path, tenant: str) -> UnifiedCustomers:
    """Count the profiles of ``{tenant}.customers`` and, from ``{tenant}.identity_map``, the source records behind
    them and the profiles whose records come from two or more providers."""
    from plugins.transforms.catalog import CatalogError, ProcessedZone, load_table
    from plugins.transforms.identity import IDENTITY_MAP_TABLE

    catalog = ProcessedZone.resolve(processed_url=str(processed)).open()
    try:
        customers = load_table(catalog, tenant, "customers").scan(selected_fields=("customer_id",)).to_arrow()
        identities = (
            load_table(catalog, tenant, IDENTITY_MAP_TABLE)
            .scan(selected_fields=("source", "record_id", "customer_id"))
            .to_arrow()
        )
    except CatalogError as exc:
        raise DemoError(f"the transforms left no unified customers: {exc}") from exc
    # A provider's record has the source "provider/object" ("salesforce/Contact"); ids that events carry ("events")
    # are activity, not a provider's record of the person.
    providers: dict[str, set[str]] = defaultdict(set)
    records: set[str] = set()
    for source, record_id, customer_id in zip(
        identities["source"].to_pylist(),
        identities["record_id"].to_pylist(),
        identities["customer_id"].to_pylist(),
        strict=True,
    ):
        provider, separator, _ = (source or "").partition("/")
        if separator:
            providers[customer_id].add(provider)
            records.add(record_id)
    spanning = sum(1 for found in providers.values() if len(found) >= 2)
    return UnifiedCustomers(customers=customers.num_rows, records=len(records), cross_provider=spanning)


def _print_raw_zone(root: Path, started: datetime) -> None:
    """One line per provider: its streams, files and records, all runs and this run."""
    raw_root = root / "data" / "raw"
    store = ObjectStore(str(raw_root))
    table = Table(title=f"raw zone: {raw_root}/{DEMO_TENANT}")
    for column in ("provider", "streams", "files", "records (all runs)", "records (this run)"):
        table.add_column(column)
    for provider in DEMO_SOURCES:
        streams: set[str] = set()
        files = total = new = 0
        for info in store.list(f"{DEMO_TENANT}/{provider}"):
            key = parse_batch_key(info.key)
            rows = len(read_batch(store, info.key))
            streams.add(key.stream)
            files += 1
            total += rows
            new += rows if key.landed_at >= started else 0
        if not files:
            raise DemoError(f"the pipeline ran but nothing landed under {raw_root}/{DEMO_TENANT}/{provider}")
        table.add_row(provider, str(len(streams)), str(files), str(total), str(new))
    console.print(table)


def _print_landing_zone_summary(root: Path) -> None:
    """What else the run left: dead letters by error type, and the schema versions it registered."""
    from schema_registry import SchemaRegistry

    dlq = ObjectStore(str(root / "data" / "dlq"))
    by_error: dict[str, int] = defaultdict(int)
    for info in dlq.list(DEMO_TENANT):
        if not info.key.endswith(BATCH_SUFFIX):
            continue
        error_type = parse_batch_key(info.key).error_type
        if error_type:
            by_error[error_type] += len(read_batch(dlq, info.key))
    dead = ", ".join(f"{count} {error}" for error, count in sorted(by_error.items())) or "none"
    console.print(f"dead letter queue ({root / 'data' / 'dlq'}): {dead}")
    registry = SchemaRegistry(ObjectStore(str(root / "data" / "registry")))
    subjects = [s for s in registry.subjects() if s.startswith(f"{DEMO_TENANT}/")]
    per_provider = ", ".join(
        f"{provider} {sum(1 for s in subjects if s.split('/')[1] == provider)}" for provider in DEMO_SOURCES
    )
    console.print(f"schema registry ({root / 'data' / 'registry'}): {len(subjects)} subjects ({per_provider})")
