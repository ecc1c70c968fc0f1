"""``cdp load run|status|rollback``: processed tables into the serving stores (docs/loading.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from plugins.cli.options import JsonOption
from plugins.cli.output import console, err_console, print_json

if TYPE_CHECKING:
    from plugins.descriptors import Loader
    from plugins.loaders.runner import TableLoad

app = typer.Typer(help="Load processed tables into the serving stores: run, status, rollback.", no_args_is_help=True)

TenantOption = Annotated[list[str] | None, typer.Option("--tenant", help="Tenant (repeatable; default: every one).")]
TableOption = Annotated[list[str] | None, typer.Option("--table", help="Table (repeatable; default: every keyed one).")]
DestinationOption = Annotated[
    list[str] | None,
    typer.Option("--destination", help="Store: a registered loader, e.g. postgres (repeatable; default: every one)."),
]
ProcessedUrlOption = Annotated[
    str | None,
    typer.Option("--processed-url", help="Processed zone URL [env CDP_PROCESSED_URL; default data/processed]"),
]
PostgresUrlOption = Annotated[
    str | None,
    typer.Option(
        "--postgres-url",
        envvar="CDP_POSTGRES_URL",
        help="PostgreSQL URL (default: the embedded server in data/postgres, started on demand).",
        show_envvar=True,
    ),
]
EsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--es-url",
        envvar="CDP_ES_URL",
        help="Elasticsearch / OpenSearch URL (default: http://127.0.0.1:9200).",
        show_envvar=True,
    ),
]
EsFlavourOption = Annotated[
    str | None,
    typer.Option(
        "--es-flavour",
        envvar="CDP_ES_FLAVOUR",
        help="The search cluster's kind: elasticsearch (default) or opensearch.",
        show_envvar=True,
    ),
]


@contextmanager
def _loaders(destinations: Sequence[str], settings: dict[str, dict[str, Any]]) -> Iterator[dict[str, Loader]]:
    """The asked loaders, built from their settings and closed afterwards."""
    from plugins.manager import loaders

    registered = loaders()
    unknown = [name for name in destinations if name not in registered]
    if unknown:
        raise typer.BadParameter(f"no loader '{unknown[0]}'; registered: {', '.join(sorted(registered)) or 'none'}")
    with ExitStack() as stack:
        built: dict[str, Loader] = {}
        # By default every registered store; the search cluster only when a URL says where it is (it has no local
        # default to start, as PostgreSQL's embedded server is).
        default = [name for name in sorted(registered) if name != "elasticsearch" or "elasticsearch" in settings]
        for name in destinations or default:
            loader = registered[name].load_loader()(**settings.get(name, {}))
            if hasattr(loader, "close"):
                stack.callback(loader.close)
            built[name] = loader
        yield built


def _context(processed_url: str | None) -> tuple[Any, dict[str, Sequence[str]]]:
    from plugins.loaders.runner import table_keys
    from plugins.manager import transforms
    from plugins.transforms.catalog import ProcessedZone

    return ProcessedZone.resolve(processed_url).open(), table_keys(transforms())


def _settings(
    postgres_url: str | None, es_url: str | None = None, es_flavour: str | None = None
) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {"postgres": {"postgres_url": postgres_url}} if postgres_url else {}
    search = {name: value for name, value in (("es_url", es_url), ("flavour", es_flavour)) if value}
    if search:
        settings["elasticsearch"] = search
    return settings


def _progress(loaded: TableLoad) -> None:
    result = loaded.result
    where = f"{loaded.tenant}.{loaded.table} -> {loaded.destination}"
    if loaded.skipped:
        err_console.print(f"{where}: {loaded.note}", highlight=False)
        return
    if loaded.note:
        err_console.print(f"{where}: {loaded.note}", highlight=False)
    err_console.print(
        f"{where}: {loaded.mode.value}, snapshot {result.snapshot_id}: {result.inserted} inserted, {result.updated} "
        f"updated, {result.unchanged} unchanged, {result.deleted} deleted in {result.seconds:.1f} s",
        highlight=False,
    )


@app.command("run")
def run(
    tenant: TenantOption = None,
    table: TableOption = None,
    destination: DestinationOption = None,
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="Reload everything and swap it in atomically.")
    ] = False,
    processed_url: ProcessedUrlOption = None,
    postgres_url: PostgresUrlOption = None,
    es_url: EsUrlOption = None,
    es_flavour: EsFlavourOption = None,
    json_output: JsonOption = False,
) -> None:
    """Bring every asked store to each table's current snapshot (incremental unless --full-refresh)."""
    import time

    from plugins.loaders.runner import load_tables

    started = time.monotonic()
    catalog, keys = _context(processed_url)
    with _loaders(destination or [], _settings(postgres_url, es_url, es_flavour)) as built:
        loads = load_tables(
            catalog,
            built,
            keys,
            tenants=tenant or [],
            tables=table or [],
            full_refresh=full_refresh,
            on_loaded=None if json_output else _progress,
        )
    if not loads and not json_output:
        err_console.print("nothing to load: no table a transform writes exists for these tenants", highlight=False)
    if json_output:
        totals = {
            name: sum(getattr(item.result, name) for item in loads)
            for name in ("inserted", "updated", "unchanged", "deleted")
        }
        print_json({"tables": [item.summary() for item in loads], **totals, "seconds": time.monotonic() - started})


@app.command("status")
def status(
    tenant: TenantOption = None,
    table: TableOption = None,
    destination: DestinationOption = None,
    processed_url: ProcessedUrlOption = None,
    postgres_url: PostgresUrlOption = None,
    es_url: EsUrlOption = None,
    es_flavour: EsFlavourOption = None,
    json_output: JsonOption = False,
) -> None:
    """Per table and store: the snapshot loaded, the latest, and how far behind."""
    from rich.table import Table

    from plugins.loaders.runner import load_status

    catalog, keys = _context(processed_url)
    with _loaders(destination or [], _settings(postgres_url, es_url, es_flavour)) as built:
        statuses = load_status(catalog, built, keys, tenants=tenant or [], tables=table or [])
    if json_output:
        print_json([{**item.__dict__, "up_to_date": item.up_to_date} for item in statuses])
        return
    view = Table("tenant", "table", "destination", "loaded", "latest", "behind", "lag (s)")
    for item in statuses:
        behind = "-" if item.snapshots_behind is None else str(item.snapshots_behind)
        lag = "-" if item.lag_seconds is None else f"{item.lag_seconds:.0f}"
        view.add_row(
            item.tenant,
            item.table,
            item.destination,
            str(item.loaded_snapshot_id or "never"),
            str(item.latest_snapshot_id or "-"),
            behind,
            lag,
        )
    console.print(view)


@app.command("rollback")
def rollback(
    table: Annotated[str, typer.Argument(help="The table to put back as it was before its last full refresh.")],
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant.")],
    destination: Annotated[str, typer.Option("--destination", help="Store.")] = "postgres",
    postgres_url: PostgresUrlOption = None,
    es_url: EsUrlOption = None,
    es_flavour: EsFlavourOption = None,
) -> None:
    """Swap the previous table back in (the one the last full refresh replaced)."""
    from plugins.loaders.runner import rollback as roll_back

    with _loaders([destination], _settings(postgres_url, es_url, es_flavour)) as built:
        snapshot = roll_back(built[destination], destination, tenant, table)
    console.print(f"{tenant}.{table} -> {destination}: rolled back; it holds snapshot {snapshot}", highlight=False)
