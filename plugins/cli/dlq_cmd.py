"""``cdp dlq``: review, fix and reprocess the dead letter queue (see docs/support-runbook.md)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from plugins.cli.options import (
    DlqUrlOption,
    JsonOption,
    LakeUrlOption,
    RawUrlOption,
    RegistryUrlOption,
    S3EndpointOption,
    Zone,
    resolve_zone_url,
)
from plugins.cli.output import console, print_json, styled
from plugins.core.dead_letters import ErrorType
from plugins.core.errors import CdpError, ConfigError
from plugins.core.leases import DEFAULT_LEASE_TTL
from plugins.core.redaction import RecordMasker
from plugins.core.serialization import dumps
from plugins.core.storage import ObjectStore
from plugins.core.zones import configured_zone_url
from plugins.dlq.audit import AuditLog, current_actor
from plugins.dlq.ops import (
    REQUEST_ERROR_TYPES,
    DlqFilter,
    check_dlq_volume,
    dlq_stats,
    format_duration,
    list_batches,
    normalize_batch_key,
    parse_duration,
    parse_instant,
    purge,
    purge_candidates,
    show_batch,
)
from plugins.dlq.record_mapping import load_mapping
from plugins.dlq.reprocess import BatchHandler, Reprocessor
from plugins.dlq.resubmit import Resubmitter
from plugins.meltano.project import find_project_root

app = typer.Typer(
    help="The dead letter queue: list, show, stats, reprocess, resubmit, purge, audit.", no_args_is_help=True
)

TenantOption = Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")]
ProviderOption = Annotated[str | None, typer.Option("--provider", help="Only this provider (e.g. stripe).")]
ErrorTypeOption = Annotated[str | None, typer.Option("--error-type", help="Only this error type.")]
StreamOption = Annotated[str | None, typer.Option("--stream", help="Only this stream.")]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Landed at or after: ISO date/time or a duration back (24h, 7d).")
]
UntilOption = Annotated[str | None, typer.Option("--until", help="Landed before: ISO date/time or a duration back.")]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who is acting, for the audit log [default: $USER].")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print what would happen; change nothing.")]
DEFAULT_LEASE_TTL_TEXT = format_duration(DEFAULT_LEASE_TTL)
LeaseTtlOption = Annotated[
    str,
    typer.Option(
        "--lease-ttl",
        help="How long a batch's lease lasts without a heartbeat; a run on another host takes it over after that.",
    ),
]
BatchesArgument = Annotated[
    list[str] | None, typer.Argument(help="DLQ batch keys (as 'cdp dlq list' prints them).", show_default=False)
]


def _store(url: str | None, zone: Zone, endpoint: str | None, lake: str | None) -> ObjectStore:
    return ObjectStore(resolve_zone_url(zone, url, lake), s3_endpoint_url=endpoint, setting=f"--{zone.value}-url")


def _stores(**stores: ObjectStore) -> dict[str, str]:
    """Which store each figure of a report came from, by zone: what every report says (text and --json)."""
    return {zone: store.url_for("") for zone, store in stores.items()}


def _print_stores(stores: dict[str, str]) -> None:
    console.print(
        "stores: " + "; ".join(f"{zone} {url}" for zone, url in stores.items()), highlight=False, soft_wrap=True
    )


def _filter(
    tenant: str | None,
    provider: str | None,
    error_type: str | None,
    stream: str | None,
    since: str | None,
    until: str | None,
) -> DlqFilter:
    return DlqFilter(
        tenant=tenant,
        provider=provider,
        error_type=error_type,
        stream=stream,
        since=parse_instant("--since", since) if since else None,
        until=parse_instant("--until", until) if until else None,
    )


def _selected(store: ObjectStore, batches: list[str] | None, flt: DlqFilter, *, any_filter: bool) -> list[str]:
    if batches:
        return [normalize_batch_key(store, batch) for batch in batches]
    if not any_filter:
        raise typer.BadParameter("name BATCH keys or give a filter (--tenant, --provider, --error-type, --stream...)")
    return [batch.key for batch in list_batches(store, flt, count_records=False)]


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on a terminal for more than one batch; a no-op otherwise."""
    if total < 2 or not console.is_terminal:
        yield lambda _key: None
        return
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda _key: progress.advance(task)


def _absolute(url: str | None) -> str | None:
    """A zone URL Meltano can use from the project root: local paths made absolute, other URLs unchanged."""
    return ObjectStore(url).url_for("") if url else None


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_command(
    tenant: TenantOption = None,
    provider: ProviderOption = None,
    error_type: ErrorTypeOption = None,
    stream: StreamOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    dlq_url: DlqUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """List DLQ batches with their record counts, oldest first."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    batches = list_batches(store, _filter(tenant, provider, error_type, stream, since, until))
    if as_json:
        records = sum(b.record_count or 0 for b in batches)
        print_json({"batches": [b.as_dict() for b in batches], "records": records, "stores": _stores(dlq=store)})
        return
    table = Table(title=f"DLQ batches in {store.url}", title_justify="left")
    for column in ("landed (UTC)", "tenant", "provider", "error type", "stream", "records", "key"):
        table.add_column(column, overflow="fold")
    for b in batches:
        table.add_row(_when(b.landed_at), b.tenant, b.provider, b.error_type, b.stream, str(b.record_count), b.key)
    console.print(table)
    console.print(f"{len(batches)} batches, {sum(b.record_count or 0 for b in batches)} records")
    _print_stores(_stores(dlq=store))


@app.command("show")
def show_command(
    batch: Annotated[str, typer.Argument(help="A DLQ batch key.", show_default=False)],
    mask_field: Annotated[
        list[str] | None,
        typer.Option("--mask-field", help="Also mask this property or dotted path (repeatable; env CDP_PII_FIELDS)."),
    ] = None,
    dlq_url: DlqUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a batch's errors grouped by message and JSON path, with a masked example record per group."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    report = show_batch(store, batch, RecordMasker.configured(mask_field or []))
    if as_json:
        print_json({**report.as_dict(), "stores": _stores(dlq=store)})
        return
    b = report.batch
    console.print(styled((b.key, "bold")), highlight=False)
    console.print(
        f"{b.tenant}/{b.provider} · {b.error_type} · landed {_when(b.landed_at)} UTC · {b.record_count} records · "
        f"streams {report.streams} · retry counts {report.retry_counts} · schema versions {report.schema_versions}",
        highlight=False,
    )
    table = Table(title="errors by path and message", title_justify="left")
    for column in ("records", "path", "message", "example (line, masked)"):
        table.add_column(column, overflow="fold")
    for group in report.groups:
        example = dumps(group.example).decode()
        table.add_row(str(group.count), group.path, group.message, f"L{group.example_line} {example}")
    console.print(table)
    for context in report.context_examples:
        console.print(f"context: {dumps(context).decode()}", highlight=False, soft_wrap=True)
    _print_stores(_stores(dlq=store))


@app.command("stats")
def stats_command(
    tenant: TenantOption = None,
    provider: ProviderOption = None,
    since: Annotated[str, typer.Option("--since", help="Window start: ISO date/time or a duration back.")] = "24h",
    until: UntilOption = None,
    dlq_url: DlqUrlOption = None,
    raw_url: RawUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """The daily report: DLQ counts by tenant, provider, error type and stream, and success rates per provider."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    raw_store = _store(raw_url, Zone.RAW, s3_endpoint_url, lake_url)
    stats = dlq_stats(store, raw_store, _filter(tenant, provider, None, None, since, until))
    if as_json:
        print_json({**stats.as_dict(), "stores": _stores(dlq=store, raw=raw_store)})
        return
    title = f"DLQ {_when(stats.since)} → {_when(stats.until)} UTC"
    table = Table(title=title, title_justify="left")
    for column in ("tenant", "provider", "error type", "stream", "batches", "records"):
        table.add_column(column)
    for row in stats.rows:
        table.add_row(row.tenant, row.provider, row.error_type, row.stream, str(row.batches), str(row.records))
    console.print(table)
    rates = Table(title="validation success rate (raw / (raw + DLQ records))", title_justify="left")
    for column in ("tenant", "provider", "raw records", "DLQ records", "failed requests", "success rate"):
        rates.add_column(column)
    for p in stats.providers:
        rate = f"{p.success_rate:.2%}" if p.success_rate is not None else "-"
        rates.add_row(p.tenant, p.provider, str(p.raw_records), str(p.dlq_records), str(p.failed_requests), rate)
    console.print(rates)
    totals = stats.totals()
    console.print(f"{totals['batches']} DLQ batches, {totals['records']} entries in the window")
    _print_stores(_stores(dlq=store, raw=raw_store))


def _print_outcomes(rows: list[dict[str, Any]], columns: tuple[str, ...], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    console.print(table)


@app.command("reprocess")
def reprocess_command(
    batches: BatchesArgument = None,
    tenant: TenantOption = None,
    provider: ProviderOption = None,
    error_type: ErrorTypeOption = None,
    stream: StreamOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    schema_version: Annotated[
        int | None, typer.Option("--schema-version", help="Validate against this version [default: latest].")
    ] = None,
    map_file: Annotated[
        Path | None, typer.Option("--map", help="Record mapping: YAML/JSON (rename, drop, set, cast) or a .py file.")
    ] = None,
    lease_ttl: LeaseTtlOption = DEFAULT_LEASE_TTL_TEXT,
    dry_run: DryRunOption = False,
    actor: ActorOption = None,
    dlq_url: DlqUrlOption = None,
    raw_url: RawUrlOption = None,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            "--postgres-url",
            envvar="CDP_POSTGRES_URL",
            show_envvar=True,
            help="PostgreSQL holding the send log: activation_failed members are sent again through their destination.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate DLQ records again (optionally after --map); passing ones go to raw, the rest back to the DLQ.
    activation_failed members are sent again through their destination (needs --postgres-url)."""
    from schema_registry import SchemaRegistry

    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    raw_store = _store(raw_url, Zone.RAW, s3_endpoint_url, lake_url)
    registry = SchemaRegistry(_store(registry_url, Zone.REGISTRY, s3_endpoint_url, lake_url))
    mapping = load_mapping(map_file) if map_file else None
    flt = _filter(tenant, provider, error_type, stream, since, until)
    any_filter = any(v is not None for v in (tenant, provider, error_type, stream, since, until))
    sources = _selected(store, batches, flt, any_filter=any_filter)
    if not batches:
        sources = [s for s in sources if s.split("/")[2] not in REQUEST_ERROR_TYPES]
    if not batches and not postgres_url and error_type != ErrorType.ACTIVATION_FAILED:
        # Members to send again, not records: only with the send log's PostgreSQL, or when asked for by name.
        sources = [s for s in sources if s.split("/")[2] != ErrorType.ACTIVATION_FAILED]
    reprocessor = Reprocessor(
        store,
        raw_store,
        registry,
        actor=current_actor(actor),
        mapping=mapping,
        schema_version=schema_version,
        lease_ttl=parse_duration("--lease-ttl", lease_ttl),
        handlers=_activation_handlers(postgres_url, store),
    )
    with _progress(len(sources), "reprocessing") as advance:
        report = reprocessor.run(
            sources, dry_run=dry_run, parameters={"filter": flt.as_dict(), "batches": batches or []}, on_batch=advance
        )
    stores = _stores(dlq=store, raw=raw_store, registry=registry.store)
    if as_json:
        print_json({**report.as_dict(), "stores": stores})
    else:
        rows = [
            {**o.as_dict(), "schema": ",".join(f"{s}:v{v}" for s, v in o.schema_versions.items())}
            for o in report.outcomes
        ]
        title = "reprocess (dry run: nothing written)" if dry_run else "reprocess"
        _print_outcomes(rows, ("source", "status", "records", "passed", "failed", "schema", "message"), title)
        new_errors: dict[str, int] = {}
        for outcome in report.outcomes:
            for error, count in outcome.new_errors.items():
                new_errors[error] = new_errors.get(error, 0) + count
        for error, count in sorted(new_errors.items(), key=lambda item: -item[1])[:10]:
            console.print(f"  still failing: {count} x {error}", highlight=False, soft_wrap=True)
        totals = report.totals()
        console.print(
            f"{totals['batches']} batches, {totals['records']} records: {totals['passed']} to raw, "
            f"{totals['failed']} back to the DLQ" + (f"; audit {report.audit_key}" if report.audit_key else ""),
            highlight=False,
        )
        _print_stores(stores)
    if report.aborted:
        raise CdpError(report.aborted)
    if not report.ok:
        raise typer.Exit(1)


def _activation_handlers(postgres_url: str | None, dlq: ObjectStore) -> dict[str, BatchHandler]:
    """``activation_failed`` batches go back through their destination when PostgreSQL (the send log) is given."""
    if not postgres_url:
        return {}
    import psycopg

    from plugins.activation.resend import ActivationResender
    from plugins.manager import activators

    resender = ActivationResender(
        lambda: psycopg.connect(postgres_url), dlq, activators(), tombstones=_erasure_tombstones
    )
    return {ErrorType.ACTIVATION_FAILED.value: resender}


def _erasure_tombstones(tenant: str) -> Any:
    """The tenant's erasure tombstones from the default processed zone (none when nobody was erased)."""
    from plugins.loaders.changes import erasure_tombstones

    return erasure_tombstones(None, tenant)


@app.command("resubmit")
def resubmit_command(
    batches: BatchesArgument = None,
    tenant: TenantOption = None,
    provider: ProviderOption = None,
    stream: StreamOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    environment: Annotated[str, typer.Option("--environment", help="Meltano environment.")] = "dev",
    loader: Annotated[str, typer.Option("--loader", help="Meltano loader to send records to.")] = "target-s3raw",
    lease_ttl: LeaseTtlOption = DEFAULT_LEASE_TTL_TEXT,
    dry_run: DryRunOption = False,
    actor: ActorOption = None,
    dlq_url: DlqUrlOption = None,
    raw_url: RawUrlOption = None,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-run failed extractions (extraction_failed, rate_limit_exhausted, auth_failed) through the tap with Meltano."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    flt = _filter(tenant, provider, None, stream, since, until)
    any_filter = any(v is not None for v in (tenant, provider, stream, since, until))
    sources = _selected(store, batches, flt, any_filter=any_filter)
    if not batches:
        sources = [s for s in sources if s.split("/")[2] in REQUEST_ERROR_TYPES]
    extra_env = {}
    if s3_endpoint_url:
        extra_env["AWS_ENDPOINT_URL"] = s3_endpoint_url
    resubmitter = Resubmitter(
        store,
        project_root=find_project_root(),
        actor=current_actor(actor),
        environment=environment,
        loader=loader,
        raw_url=_absolute(configured_zone_url(Zone.RAW, raw_url, lake_url)),
        registry_url=_absolute(configured_zone_url(Zone.REGISTRY, registry_url, lake_url)),
        extra_env=extra_env,
        lease_ttl=parse_duration("--lease-ttl", lease_ttl),
    )
    with _progress(len(sources), "resubmitting") as advance:
        report = resubmitter.run(
            sources, dry_run=dry_run, parameters={"filter": flt.as_dict(), "batches": batches or []}, on_batch=advance
        )
    stores = {
        **_stores(dlq=store),
        "raw": resubmitter.raw_url or "the loader's raw_url in meltano.yml",
        "registry": resubmitter.registry_url or "the loader's registry_url in meltano.yml",
    }
    if as_json:
        print_json({**report.as_dict(), "stores": stores})
    else:
        rows = [o.as_dict() for o in report.outcomes]
        for row in rows:
            row["commands"] = "\n".join(row["commands"])
        title = "resubmit (dry run: nothing run)" if dry_run else "resubmit"
        columns = ("source", "status", "entries", "commands", "message") if dry_run else ("source", "status", "message")
        _print_outcomes(rows, columns, title)
        if report.audit_key:
            console.print(f"audit {report.audit_key}", highlight=False)
        _print_stores(stores)
    if not report.ok:
        raise typer.Exit(1)


@app.command("purge")
def purge_command(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Required: delete batches that landed longer ago (30d, 12w).")
    ],
    tenant: TenantOption = None,
    provider: ProviderOption = None,
    error_type: ErrorTypeOption = None,
    stream: StreamOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation (for scripts).")] = False,
    dry_run: DryRunOption = False,
    actor: ActorOption = None,
    dlq_url: DlqUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete DLQ batches (and retired copies) older than --older-than, after confirmation; audited."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    cutoff = datetime.now(UTC) - parse_duration("--older-than", older_than)
    flt = DlqFilter(tenant=tenant, provider=provider, error_type=error_type, stream=stream, until=cutoff)
    batches, retired = purge_candidates(store, flt)
    records = sum(b.record_count or 0 for b in batches)
    summary = (
        f"{len(batches)} DLQ batches ({records} records) and {len(retired)} retired copies landed before "
        f"{_when(cutoff)} in {store.url}"
    )
    if not dry_run and (batches or retired) and not yes:
        if not sys.stdin.isatty():
            raise ConfigError("--yes", "purge asks for confirmation; pass --yes when running without a terminal")
        if not typer.confirm(f"Delete {summary}?", default=False):
            raise CdpError("purge cancelled; nothing was deleted")
    result = purge(store, batches, retired, actor=current_actor(actor), flt=flt, dry_run=dry_run)
    if as_json:
        print_json({**result.as_dict(), "stores": _stores(dlq=store)})
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {summary}", highlight=False)
    if result.held:
        console.print(
            f"kept {len(result.held)} of them: a running reprocess or resubmit holds them; purge again later: "
            + ", ".join(result.held),
            highlight=False,
            soft_wrap=True,
        )
    _print_stores(_stores(dlq=store))
    if result.audit_key:
        console.print(f"audit {result.audit_key}", highlight=False)


@app.command("audit")
def audit_command(
    since: SinceOption = None,
    action: Annotated[str | None, typer.Option("--action", help="Only reprocess, resubmit or purge.")] = None,
    dlq_url: DlqUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """The audit log of DLQ changes: who, when, what, counts before and after."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    entries = AuditLog(store).entries(since=parse_instant("--since", since) if since else None, action=action)
    if as_json:
        print_json({"entries": [{**e.as_dict(), "key": e.key} for e in entries], "stores": _stores(dlq=store)})
        return
    table = Table(title=f"DLQ audit log in {store.url}", title_justify="left")
    for column in ("at (UTC)", "actor", "action", "outcome", "batches", "before", "after"):
        table.add_column(column, overflow="fold")
    for e in entries:
        before = ", ".join(f"{k}={v}" for k, v in e.counts_before.items())
        after = ", ".join(f"{k}={v}" for k, v in e.counts_after.items())
        table.add_row(_when(e.at), e.actor, e.action, e.outcome, str(len(e.batches)), before, after)
    console.print(table)
    _print_stores(_stores(dlq=store))


@app.command("alert")
def alert_command(
    threshold: Annotated[
        int, typer.Option("--threshold", envvar="CDP_DLQ_ALERT_THRESHOLD", help="Alert above this many entries.")
    ] = 1000,
    window: Annotated[str, typer.Option("--window", help="Look back this far (e.g. 1h, 24h).")] = "24h",
    tenant: TenantOption = None,
    provider: ProviderOption = None,
    dlq_url: DlqUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Raise a dlq_volume alert for each tenant/provider whose DLQ grew past --threshold within --window."""
    store = _store(dlq_url, Zone.DLQ, s3_endpoint_url, lake_url)
    breaches = check_dlq_volume(
        store,
        threshold=threshold,
        window=parse_duration("--window", window),
        flt=DlqFilter(tenant=tenant, provider=provider),
    )
    if as_json:
        breached = [b.as_dict() for b in breaches]
        print_json({"threshold": threshold, "window": window, "breaches": breached, "stores": _stores(dlq=store)})
        return
    _print_stores(_stores(dlq=store))
    if not breaches:
        console.print(f"no tenant/provider above {threshold} DLQ entries in the last {window}")
    for b in breaches:
        console.print(
            f"ALERT dlq_volume {b.tenant}/{b.provider}: {b.records} entries in the last {window} "
            f"(threshold {threshold}) {b.by_error_type}",
            highlight=False,
        )
