"""``cdp segment ...``: define, refresh and compare segments in the tenant's PostgreSQL (docs/segments.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from plugins.cli.load_cmd import PostgresUrlOption
from plugins.cli.options import CatalogUrlOption, JsonOption, ProcessedUrlOption, SparkMasterOption
from plugins.cli.output import console, err_console, print_error, print_json
from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from psycopg import Connection

    from activators.segments.export import ExportManifest
    from activators.segments.model import Segment
    from activators.segments.store import Engine, LakeEngine, RefreshResult

app = typer.Typer(
    help="Segments: audiences over unified customers (apply, create, list, show, preview, refresh, delete, overlap, "
    "export).",
    no_args_is_help=True,
)

TENANT_ENV_VAR = "CDP_TENANT"
DEFAULT_PATHS = (Path("segments"),)
LOCAL_DATA_DIR = Path("data")

TenantOption = Annotated[
    str,
    typer.Option("--tenant", envvar=TENANT_ENV_VAR, show_envvar=True, help="Tenant whose customers and segments."),
]
NameArgument = Annotated[str, typer.Argument(help="The segment's name.", show_default=False)]
EngineOption = Annotated[
    str, typer.Option("--engine", help="postgres (the loaded tables) or lake (Spark over the processed zone).")
]


ExportsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--exports-url",
        envvar="CDP_EXPORTS_URL",
        show_envvar=True,
        help="Where audience exports go: a folder or s3://bucket/prefix [default: data/exports].",
    ),
]
ConsentModeOption = Annotated[
    str | None,
    typer.Option(
        "--consent-mode",
        envvar="CDP_CONSENT_MODE",
        show_envvar=True,
        help="opt-out: export unless the channel was refused [default]; opt-in: only who granted it.",
    ),
]


class SegmentFileError(typer.BadParameter):
    """A definition file that cannot be read as YAML (a usage error: exit 2)."""


def resolve_postgres_url(explicit: str | None) -> str:
    """``--postgres-url`` (or ``CDP_POSTGRES_URL``), else the local stand-in the ``postgres`` loader registers (the
    embedded server in ``data/postgres``, started if needed and left running, as ``cdp load`` does)."""
    from activators.segments.store import SegmentStoreError
    from plugins.manager import loaders

    if explicit:
        return explicit
    descriptor = loaders().get("postgres")
    if descriptor is None or descriptor.local_server is None:
        raise SegmentStoreError("no PostgreSQL: give --postgres-url or set CDP_POSTGRES_URL")
    with descriptor.load_local_server()(LOCAL_DATA_DIR / "postgres") as url:
        return url


@contextmanager
def postgres_connection(postgres_url: str | None) -> Iterator[Connection[Any]]:
    """A connection to the PostgreSQL the options name (see resolve_postgres_url), closed on exit."""
    from activators.segments.store import connect

    conn = connect(resolve_postgres_url(postgres_url))
    try:
        yield conn
    finally:
        conn.close()


def yaml_files(paths: Sequence[Path]) -> list[Path]:
    """The files named, and the ``*.yml``/``*.yaml`` files of the folders named, in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted([*path.glob("*.yml"), *path.glob("*.yaml")]))
        elif path.is_file():
            files.append(path)
        else:
            raise SegmentFileError(f"no file or folder {path}")
    return files


def read_definition(path: Path) -> Segment:
    """One YAML file as a :class:`Segment` (SegmentDefinitionError naming the file and the path in it)."""
    import yaml

    from activators.segments.model import SegmentDefinitionError, parse_segment

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SegmentFileError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SegmentDefinitionError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise SegmentDefinitionError(f"{path}: a segment definition is a YAML mapping (name, criteria, ...)")
    return parse_segment(data, source=str(path))


def say(text: str) -> None:
    """One line (or block) of output as it is: never wrapped at the terminal's width (scripts and YAML read it)."""
    console.print(text, highlight=False, soft_wrap=True)


def format_when(value: datetime | None) -> str:
    """A moment as UTC ``YYYY-MM-DD HH:MM:SS`` in tables, ``never`` when there is none."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "never"


@app.command("apply")
def apply_command(
    tenant: TenantOption,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Definition files or folders of *.yml [default: segments/].", show_default=False),
    ] = None,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create or update the segments the YAML files define; stored segments without a file are kept (not deleted)."""
    from activators.segments import store

    segments = [read_definition(path) for path in yaml_files(paths or DEFAULT_PATHS)]
    with postgres_connection(postgres_url) as conn:
        summary = store.apply(conn, tenant, segments)
    if json_output:
        print_json(summary.summary())
        return
    for label, names in (("created", summary.created), ("updated", summary.updated), ("unchanged", summary.unchanged)):
        listed = f": {', '.join(names)}" if names else ""
        say(f"{label}: {len(names)}{listed}")
    if summary.not_in_files:
        say(f"kept (stored, no file applied; delete with cdp segment delete): {', '.join(summary.not_in_files)}")


@app.command("create")
def create_command(
    tenant: TenantOption,
    file: Annotated[Path, typer.Argument(help="A YAML definition file.", show_default=False)],
    postgres_url: PostgresUrlOption = None,
) -> None:
    """Store a new segment from one YAML file (refused when the name exists)."""
    from activators.segments import store

    segment = read_definition(file)
    with postgres_connection(postgres_url) as conn:
        store.create(conn, tenant, segment)
    say(f"created {segment.name} ({segment.type.value}); refresh it with cdp segment refresh {segment.name}")


@app.command("list")
def list_command(
    tenant: TenantOption,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """The tenant's segments: type, size, last refresh, cron."""
    from rich.table import Table

    from activators.segments import store

    with postgres_connection(postgres_url) as conn:
        segments = store.list_segments(conn, tenant)
    if json_output:
        print_json({"segments": [item.summary() for item in segments]})
        return
    view = Table("name", "type", "size", "last refreshed (UTC)", "refresh", "description")
    for item in segments:
        size = "-" if item.size is None else str(item.size)
        view.add_row(
            item.name,
            item.type.value,
            size,
            format_when(item.last_refreshed),
            item.refresh_frequency or "",
            item.description,
        )
    console.print(view)


@app.command("show")
def show_command(
    tenant: TenantOption,
    name: NameArgument,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """A segment's definition (as YAML) and its last refresh."""
    import yaml

    from activators.segments import store

    with postgres_connection(postgres_url) as conn:
        stored = store.get(conn, tenant, name)
    if json_output:
        print_json({**stored.summary(), "definition": stored.definition})
        return
    definition = yaml.safe_dump(dict(stored.definition), sort_keys=False, allow_unicode=True)
    say(definition.rstrip())
    size = "-" if stored.size is None else str(stored.size)
    say(f"# size {size}, last refreshed {format_when(stored.last_refreshed)} (refresh {stored.last_refresh_id or '-'})")


@app.command("preview")
def preview_command(
    tenant: TenantOption,
    name_or_file: Annotated[str, typer.Argument(help="A stored segment's name, or a YAML file.", show_default=False)],
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """The size and 10 members (emails masked) the segment would have now; nothing is stored."""
    from activators.segments import store

    path = Path(name_or_file)
    with postgres_connection(postgres_url) as conn:
        is_file = path.suffix in (".yml", ".yaml") or path.is_file()
        segment = read_definition(path) if is_file else store.get(conn, tenant, name_or_file).segment
        found = store.preview(conn, tenant, segment)
    if json_output:
        print_json({"segment": segment.name, "size": found.size, "sample": found.sample})
        return
    say(f"{segment.name}: {found.size} customers now (nothing stored)")
    for row in found.sample:
        email = "" if row["email"] is None else row["email"]
        say(f"  {row['customer_id']}  {email}")


def _lake(processed_url: str | None, catalog_url: str | None, spark_master: str | None) -> LakeEngine:
    from activators.segments.store import LakeEngine
    from plugins.transforms.catalog import ProcessedZone
    from plugins.transforms.spark import spark_session

    return LakeEngine(zone=ProcessedZone.resolve(processed_url, catalog_url), spark=spark_session(spark_master))


def _print_refresh(result: RefreshResult) -> None:
    say(
        f"{result.segment}: refresh {result.refresh_id} ({result.engine}): {result.size} members, {result.entered} "
        f"entered, {result.left} left in {result.seconds:.2f} s"
    )


@app.command("refresh")
def refresh_command(
    tenant: TenantOption,
    name: Annotated[str | None, typer.Argument(help="The segment to refresh.", show_default=False)] = None,
    due: Annotated[bool, typer.Option("--due", help="Refresh every segment whose cron has fired.")] = False,
    engine: EngineOption = "postgres",
    postgres_url: PostgresUrlOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    spark_master: SparkMasterOption = None,
    export_channel: Annotated[
        str | None,
        typer.Option("--export", help="Then export each refresh for this channel (email, sms, ads) as Parquet."),
    ] = None,
    exports_url: ExportsUrlOption = None,
    consent_mode: ConsentModeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Recompute members and record who entered and left (one segment, or --due: every one whose cron fired)."""
    from activators.segments import store

    if (name is None) == (not due):
        raise typer.BadParameter("give a segment name or --due (not both)")
    if engine not in store.ENGINES:
        raise typer.BadParameter(f"--engine is postgres or lake, not '{engine}'")
    chosen: Engine = "lake" if engine == "lake" else "postgres"
    results: list[RefreshResult] = []
    exports: list[ExportManifest] = []
    failed: list[str] = []
    with postgres_connection(postgres_url) as conn:
        names = store.due(conn, tenant, datetime.now(UTC)) if due else [name or ""]
        lake = _lake(processed_url, catalog_url, spark_master) if chosen == "lake" and names else None
        for each in names:
            try:
                result = store.refresh(conn, tenant, each, engine=chosen, lake=lake)
                results.append(result)
                if not json_output:
                    _print_refresh(result)
                if export_channel is not None:
                    exported = _export(
                        conn, tenant, each, result.refresh_id, export_channel, exports_url, processed_url, catalog_url,
                        consent_mode=consent_mode,
                    )  # fmt: skip
                    exports.append(exported)
                    if not json_output:
                        _print_export(exported)
            except CdpError as exc:
                if not due:
                    raise
                # One segment's problem (a field gone from the tables, an export that failed) must not hold up the
                # others' schedules.
                print_error(f"{each}: {exc}")
                failed.append(each)
    if json_output:
        payload: dict[str, Any] = {"refreshes": [result.summary() for result in results], "failed": failed}
        if export_channel is not None:
            payload["exports"] = [exported.summary() for exported in exports]
        print_json(payload)
    elif due and not results and not failed:
        err_console.print("no segment is due", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("delete")
def delete_command(
    tenant: TenantOption,
    name: NameArgument,
    postgres_url: PostgresUrlOption = None,
) -> None:
    """Delete a segment (its members go; its refresh history stays; the name can be used again)."""
    from activators.segments import store

    with postgres_connection(postgres_url) as conn:
        store.delete(conn, tenant, name)
    say(f"deleted {name}")


@app.command("overlap")
def overlap_command(
    tenant: TenantOption,
    names: Annotated[list[str], typer.Argument(help="Two or more segment names.", show_default=False)],
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """The size of every intersection of the segments' current members."""
    from rich.table import Table

    from activators.segments import store

    if len(set(names)) < 2:
        raise typer.BadParameter("give two or more different segment names")
    with postgres_connection(postgres_url) as conn:
        sizes = store.overlap(conn, tenant, names)
    if json_output:
        print_json({"overlaps": [{"segments": list(combination), "size": size} for combination, size in sizes.items()]})
        return
    view = Table("segments", "customers")
    for combination, size in sizes.items():
        view.add_row(" ∩ ".join(combination), str(size))
    console.print(view)


# -- audience exports (docs/segments.md, "Audience exports") ---------------------------------------------------------


def _export(
    conn: Connection[Any],
    tenant: str,
    name: str,
    refresh_id: int | None,
    channel: str,
    exports_url: str | None,
    processed_url: str | None,
    catalog_url: str | None,
    *,
    consent_mode: str | None = None,
    part_rows: int | None = None,
    columns: Sequence[str] = (),
) -> ExportManifest:
    from activators.segments.export import DEFAULT_PART_ROWS, export_refresh, resolve_exports_url
    from plugins.transforms.catalog import ProcessedZone

    return export_refresh(
        conn,
        tenant,
        name,
        refresh_id,
        resolve_exports_url(exports_url),
        channel=channel,
        part_rows=part_rows or DEFAULT_PART_ROWS,
        processed=ProcessedZone.resolve(processed_url, catalog_url),
        consent_mode=consent_mode,
        columns=columns,
    )


def _print_export(manifest: ExportManifest) -> None:
    counts = manifest.counts
    say(
        f"{manifest.segment}: refresh {manifest.refresh_id} exported for {manifest.channel} ({manifest.consent_mode}):"
        f" {counts['members']} members, {counts['entered']} entered, {counts['left']} left; left out "
        f"{counts['excluded_consent']} without consent, {counts['excluded_erased']} erased -> {manifest.url}"
    )


@app.command("export")
def export_command(
    tenant: TenantOption,
    name: NameArgument,
    channel: Annotated[str, typer.Option("--channel", help="email, sms or ads.", show_default=False)],
    refresh_id: Annotated[
        int | None, typer.Option("--refresh-id", help="The refresh to export [default: the latest].")
    ] = None,
    exports_url: ExportsUrlOption = None,
    part_rows: Annotated[
        int | None, typer.Option("--part-rows", min=1, help="Most rows per Parquet part [default: 1000000].")
    ] = None,
    consent_mode: ConsentModeOption = None,
    columns: Annotated[
        list[str] | None,
        typer.Option("--columns", help="Extra customers columns, by name (repeat it, or separate with commas)."),
    ] = None,
    postgres_url: PostgresUrlOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write a refresh's members, entered and left as Parquet for one channel, then its _manifest.json."""
    extra = [part.strip() for value in columns or [] for part in value.split(",") if part.strip()]
    with postgres_connection(postgres_url) as conn:
        manifest = _export(
            conn, tenant, name, refresh_id, channel, exports_url, processed_url, catalog_url,
            consent_mode=consent_mode, part_rows=part_rows, columns=extra,
        )  # fmt: skip
    if json_output:
        print_json(manifest.summary())
    else:
        _print_export(manifest)
