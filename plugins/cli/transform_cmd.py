"""``cdp transform``: run the transforms from the raw zone into the processed zone's Iceberg tables, and list them.

Spark, pyiceberg and the runner are imported inside each command, so listing the command costs nothing.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from plugins.cli.options import (
    DlqUrlOption,
    JsonOption,
    LakeUrlOption,
    ProcessedUrlOption,
    RawUrlOption,
    RegistryUrlOption,
    Zone,
    resolve_zone_url,
)
from plugins.cli.output import console, err_console, print_json, styled

if TYPE_CHECKING:
    from plugins.transforms.runner import TableSummary

app = typer.Typer(help="Transforms: the raw zone into Iceberg tables (run them, list them).", no_args_is_help=True)

TenantsOption = Annotated[
    list[str] | None,
    typer.Option("--tenant", help="Only this tenant (repeatable) [default: every tenant of the raw zone]."),
]
TablesOption = Annotated[
    list[str] | None,
    typer.Option("--table", help="Only the transform writing this table (repeatable); its inputs are not re-run."),
]
CatalogUrlOption = Annotated[
    str | None,
    typer.Option(
        "--catalog-url",
        envvar="CDP_CATALOG_URL",
        help="Iceberg SQL catalog: postgresql://... or sqlite:///path [default: SQLite in the processed zone].",
    ),
]
SparkMasterOption = Annotated[
    str | None,
    typer.Option("--spark-master", envvar="CDP_SPARK_MASTER", help="Spark master URL [default: local[*]]."),
]
DefaultRegionOption = Annotated[
    str | None,
    typer.Option(
        "--default-region",
        envvar="CDP_DEFAULT_REGION",
        help="ISO 3166 alpha-2 region of phone numbers written without a country code (per tenant: "
        "CDP_TENANT_SETTINGS).",
    ),
]


def _zones(
    lake_url: str | None, raw_url: str | None, dlq_url: str | None, registry_url: str | None, processed_url: str | None
) -> dict[str, str]:
    return {
        "raw_url": resolve_zone_url(Zone.RAW, raw_url, lake_url),
        "dlq_url": resolve_zone_url(Zone.DLQ, dlq_url, lake_url),
        "registry_url": resolve_zone_url(Zone.REGISTRY, registry_url, lake_url),
        "processed_url": resolve_zone_url(Zone.PROCESSED, processed_url, lake_url),
    }


def _counts(table: TableSummary) -> str:
    if table.status != "committed":
        return table.error or ""
    return (
        f"in {table.rows_in}, out {table.rows_out}, rejected {table.rejected}, erased {table.erased}, "
        f"merged {table.merged}, deleted {table.deleted}; raw files {table.raw_files}; snapshot {table.snapshot_id}"
    )


def _print_table(table: TableSummary, *, to_stderr: bool) -> None:
    colour = {"committed": "green", "up to date": "dim", "no input": "dim"}.get(table.status, "bold red")
    line = styled(
        (f"{table.tenant}.{table.table}", "bold"),
        "  ",
        (table.status, colour),
        f" {table.mode}" if table.mode else "",
        f"  {_counts(table)}" if _counts(table) else "",
        f"  ({table.seconds:.1f} s)",
    )
    (err_console if to_stderr else console).print(line, highlight=False, soft_wrap=True)


@app.command("run")
def run_command(
    tenant: TenantsOption = None,
    table: TablesOption = None,
    full_refresh: Annotated[
        bool,
        typer.Option("--full-refresh", help="Rebuild every table from all raw data and replace it in one commit."),
    ] = False,
    spark_master: SparkMasterOption = None,
    default_region: DefaultRegionOption = None,
    raw_url: RawUrlOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    dlq_url: DlqUrlOption = None,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the transforms: each table's new raw files (or changed input tables) merged in, one commit per table.

    Exit status 0 when every table committed or was up to date, 1 when one failed (the others still ran, except the
    ones reading a failed table), 2 on a usage error.
    """
    from plugins.transforms.runner import run_transforms
    from plugins.transforms.settings import TenantSettings

    settings = TenantSettings.resolve(default_region=default_region)  # Checked before Spark starts.
    zones = _zones(lake_url, raw_url, dlq_url, registry_url, processed_url)
    with (
        console.status("transforming...", spinner="dots")
        if console.is_terminal and not as_json
        else contextlib.nullcontext()
    ):
        summary = run_transforms(
            tenants=tenant,
            tables=table,
            full_refresh=full_refresh,
            spark_master=spark_master,
            catalog_url=catalog_url,
            settings=settings,
            progress=lambda done: _print_table(done, to_stderr=as_json),
            raw_url=zones["raw_url"],
            dlq_url=zones["dlq_url"],
            registry_url=zones["registry_url"],
            processed_url=zones["processed_url"],
        )
    if as_json:
        print_json(summary.as_dict())
    else:
        committed = sum(1 for t in summary.tables if t.status == "committed")
        failed = sum(1 for t in summary.tables if t.status in ("failed", "skipped"))
        console.print(
            f"run {summary.run_id}: {len(summary.tables)} tables, {committed} committed, {failed} failed"
            + "".join(f"; quality report {url}" for url in summary.reports.values()),
            highlight=False,
            soft_wrap=True,
        )
    if not summary.ok:
        raise typer.Exit(1)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@app.command("list")
def list_command(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Also show this tenant's tables: current snapshot, pending files.")
    ] = None,
    raw_url: RawUrlOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The transforms in the order they run: name, inputs, output table, key, partitioning."""
    from plugins.manager import transforms

    ordered = transforms()
    rows: list[dict[str, Any]] = [
        {
            "name": d.name,
            "inputs": [str(source) for source in d.inputs],
            "output": d.output,
            "key": list(d.key),
            "partitioning": list(d.partitioning),
        }
        for d in ordered
    ]
    if tenant is not None:
        from plugins.transforms.runner import transform_status

        zones = _zones(lake_url, raw_url, None, registry_url, processed_url)
        statuses = transform_status(
            tenant,
            transforms=ordered,
            raw_url=zones["raw_url"],
            processed_url=zones["processed_url"],
            catalog_url=catalog_url,
            registry_url=zones["registry_url"],
        )
        for row, status in zip(rows, statuses, strict=True):
            row.update(
                snapshot_id=status.snapshot_id,
                pending_raw_files=status.pending_raw_files,
                changed_inputs=list(status.changed_inputs),
            )
    if as_json:
        print_json({"tenant": tenant, "transforms": rows})
        return
    view = Table(title=f"transforms, in run order{f' (tenant {tenant})' if tenant else ''}")
    for column in ("name", "inputs", "output", "key", "partitioning"):
        view.add_column(column, overflow="fold", no_wrap=column == "inputs")
    if tenant is not None:
        for column in ("snapshot", "pending raw files", "changed inputs"):
            view.add_column(column)
    for row in rows:
        cells = [
            str(row["name"]),
            "\n".join(row["inputs"]),
            str(row["output"]),
            ", ".join(row["key"]),
            ", ".join(row["partitioning"]),
        ]
        if tenant is not None:
            cells += [
                str(row["snapshot_id"] or "none yet"),
                str(row["pending_raw_files"]),
                ", ".join(row["changed_inputs"]),
            ]
        view.add_row(*cells)
    console.print(view)
