"""``cdp tables``: the processed zone's Iceberg tables: list, show, history, rollback, compact, expire."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from plugins.cli.options import CatalogUrlOption, JsonOption, ProcessedUrlOption, SparkMasterOption
from plugins.cli.output import console, print_json, styled
from plugins.dlq.ops import format_duration, parse_duration

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

app = typer.Typer(
    help="The processed zone's Iceberg tables: list, show, history, rollback, compact, expire.", no_args_is_help=True
)

TableArgument = Annotated[
    str, typer.Argument(help="The table as TENANT.TABLE, e.g. acme.customers.", show_default=False)
]


def _catalog(processed_url: str | None, catalog_url: str | None) -> SqlCatalog:
    from plugins.transforms.catalog import ProcessedZone

    return ProcessedZone.resolve(processed_url, catalog_url).open()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


@app.command("list")
def list_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's tables.")] = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the tables: rows, data files, size, current snapshot and when it was committed."""
    from plugins.transforms.maintenance import list_tables

    infos = list_tables(_catalog(processed_url, catalog_url), tenant)
    if as_json:
        print_json({"tables": [info.as_dict() for info in infos]})
        return
    table = Table(title="processed tables", title_justify="left")
    for column in ("tenant", "table", "rows", "files", "size", "snapshot", "committed (UTC)"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(
            info.tenant,
            info.table,
            str(info.rows),
            str(info.files),
            _size(info.size_bytes),
            str(info.snapshot_id or ""),
            _when(info.committed_at),
        )
    console.print(table)
    console.print(f"{len(infos)} tables")


@app.command("show")
def show_command(
    name: TableArgument,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a table's schema, partitioning, properties, location, processed raw files and last quality report."""
    from plugins.transforms.maintenance import describe_table, open_table

    described = describe_table(open_table(_catalog(processed_url, catalog_url), name))
    if as_json:
        print_json(described)
        return
    console.print(styled((described["table"], "bold")), highlight=False)
    console.print(f"location: {described['location']}", soft_wrap=True, highlight=False)
    console.print(f"partitioning: {', '.join(described['partitioning']) or 'none'}", highlight=False)
    console.print(f"current snapshot: {described['current_snapshot'] or 'none'}", highlight=False)
    console.print(f"processed raw files: {described['processed_raw_files']}", highlight=False)
    columns = Table(title="columns", title_justify="left")
    for column in ("name", "type", "required"):
        columns.add_column(column, overflow="fold")
    for column in described["columns"]:
        columns.add_row(column["name"], column["type"], "yes" if column["required"] else "")
    console.print(columns)
    properties = Table(title="properties", title_justify="left")
    for column in ("property", "value"):
        properties.add_column(column, overflow="fold")
    for key, value in described["properties"].items():
        properties.add_row(key, value)
    console.print(properties)
    quality = described["quality"]
    if quality is None:
        console.print("quality: no report in the table's snapshots yet")
    else:
        console.print(f"quality (snapshot {quality['snapshot_id']}, {_when(quality['committed_at'])} UTC):")
        _print_report(quality["report"], indent="  ")


def _print_report(report: Any, indent: str) -> None:
    for key, value in sorted(report.items()) if isinstance(report, dict) else []:
        if isinstance(value, dict):
            console.print(f"{indent}{key}:" + ("" if value else " none"), highlight=False)
            _print_report(value, indent + "  ")
        else:
            console.print(f"{indent}{key}: {value}", highlight=False)


@app.command("history")
def history_command(
    name: TableArgument,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a table's snapshots, oldest first; '*' marks the current one."""
    from plugins.transforms.maintenance import open_table, table_history

    history = table_history(open_table(_catalog(processed_url, catalog_url), name))
    if as_json:
        print_json({"table": name, "snapshots": [snapshot.as_dict() for snapshot in history]})
        return
    table = Table(title=f"{name}: snapshots ('*' is current)", title_justify="left")
    for column in ("", "snapshot", "parent"):  # Ids are meant to be copied: never wrapped.
        table.add_column(column, no_wrap=True, min_width=len(column) and 19)
    for column in ("committed (UTC)", "operation", "files +/-", "rows +/-", "cdp"):
        table.add_column(column, overflow="fold")
    for s in history:
        cdp = ", ".join(f"{key.removeprefix('cdp.')}={value}" for key, value in s.cdp.items() if len(value) <= 40)
        table.add_row(
            "*" if s.current else "",
            str(s.snapshot_id),
            str(s.parent_id or ""),
            _when(s.committed_at),
            s.operation,
            f"+{s.added_files} -{s.removed_files}",
            f"+{s.added_rows} -{s.removed_rows}",
            cdp,
        )
    console.print(table)


@app.command("rollback")
def rollback_command(
    name: TableArgument,
    snapshot: Annotated[int, typer.Argument(help="The snapshot to make current ('cdp tables history' lists them).")],
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make an older snapshot current; the next 'cdp transform run' reprocesses the raw files committed after it."""
    from plugins.transforms.maintenance import open_table, rollback

    result = rollback(open_table(_catalog(processed_url, catalog_url), name), snapshot)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(
        f"{result.table}: snapshot {result.snapshot_id} is current (was {result.previous_snapshot_id}); processed raw "
        f"files {result.processed_raw_files_before} -> {result.processed_raw_files}: the next transform run "
        "processes the rest again",
        soft_wrap=True,
        highlight=False,
    )


@app.command("compact")
def compact_command(
    name: TableArgument,
    target_file_size: Annotated[
        str, typer.Option("--target-file-size", help="Size to pack small files up to, 128MB..512MB (MB = 2^20 bytes).")
    ] = "256MB",
    spark_master: SparkMasterOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rewrite, per partition, data files smaller than the target into files of about that size, in one snapshot."""
    from plugins.transforms.maintenance import compact, open_table, parse_file_size
    from plugins.transforms.spark import spark_session

    size = parse_file_size(target_file_size)
    table = open_table(_catalog(processed_url, catalog_url), name)
    result = compact(spark_session(spark_master), table, size)
    if as_json:
        print_json(result.as_dict())
        return
    if result.snapshot_id is None:
        console.print(f"{result.table}: nothing to compact (no partition has two files below {target_file_size})")
        return
    console.print(
        f"{result.table}: {result.rewritten_files} files in {result.partitions} partitions rewritten as "
        f"{result.written_files} ({result.rows} rows) in snapshot {result.snapshot_id}",
        highlight=False,
    )


@app.command("expire")
def expire_command(
    name: TableArgument,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Expire snapshots older than this: 7d, 24h, 2w.", show_default=False)
    ],
    retain_last: Annotated[int, typer.Option("--retain-last", help="Always keep this many recent snapshots.")] = 5,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Expire old snapshots and delete the files no snapshot needs (and unreferenced files older than the retention)."""
    from plugins.transforms.maintenance import expire, open_table

    retention = parse_duration("older_than", older_than)
    result = expire(open_table(_catalog(processed_url, catalog_url), name), retention, retain_last=retain_last)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(
        f"{result.table}: {len(result.expired_snapshots)} snapshots older than {format_duration(retention)} expired, "
        f"{result.kept_snapshots} kept; {result.deleted_files} files no snapshot needs and {result.deleted_orphans} "
        "unreferenced old files deleted",
        highlight=False,
    )
