"""``cdp campaign ...``: define, launch and follow campaigns in the tenant's PostgreSQL (docs/activation.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

# The same connection, tenant and zone options and file discovery as cdp segment: one way to choose each.
from activators.segments.segment_cmd import (
    ConsentModeOption,
    ExportsUrlOption,
    TenantOption,
    format_when,
    postgres_connection,
    yaml_files,
)
from plugins.cli.load_cmd import PostgresUrlOption
from plugins.cli.options import CatalogUrlOption, DlqUrlOption, JsonOption, ProcessedUrlOption
from plugins.cli.output import console, err_console, print_error, print_json
from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from activators.campaigns.launch import LaunchResult
    from activators.campaigns.store import Campaign, Content

app = typer.Typer(
    help="Campaigns: a segment's audience sent to a destination with content (create, apply, list, show, launch, "
    "pause, resume, status, preview, run --due).",
    no_args_is_help=True,
)

DEFAULT_PATHS = (Path("campaigns"), Path("contents"))
NameArgument = Annotated[str, typer.Argument(help="The campaign's name.", show_default=False)]


class CampaignFileError(typer.BadParameter):
    """A definition file that cannot be read (a usage error: exit 2)."""


def read_definitions(paths: Sequence[Path]) -> tuple[list[Campaign], list[Content]]:
    """The campaigns and contents the files define: a file under a ``contents`` folder, or with a body or subject
    and no ``segment``, is a content; the others are campaigns."""
    import yaml

    from activators.campaigns.store import CampaignDefinitionError, parse_campaign, parse_content

    campaigns: list[Campaign] = []
    contents: list[Content] = []
    for path in yaml_files(paths):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise CampaignFileError(f"cannot read {path}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise CampaignDefinitionError(f"{path}: not valid YAML{where}") from None
        is_content = path.parent.name == "contents" or (
            isinstance(data, dict) and "segment" not in data and "type" not in data
        )
        if is_content:
            contents.append(parse_content(data, source=str(path)))
        else:
            campaigns.append(parse_campaign(data, source=str(path)))
    return campaigns, contents


def _print_summary(summary: dict[str, list[str]]) -> None:
    for label in ("created", "updated", "unchanged"):
        names = summary[label]
        console.print(f"{label}: {len(names)}{': ' + ', '.join(names) if names else ''}", highlight=False)
    if summary["not_in_files"]:
        console.print(f"kept (stored, no file applied): {', '.join(summary['not_in_files'])}", highlight=False)


@app.command("apply")
def apply_command(
    tenant: TenantOption,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or folders of *.yml [default: campaigns/ and contents/].", show_default=False),
    ] = None,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create or update the campaigns and contents the YAML files define (one bad file applies nothing)."""
    from activators.campaigns import store

    campaigns, contents = read_definitions(paths or [path for path in DEFAULT_PATHS if path.exists()])
    with postgres_connection(postgres_url) as conn:
        summary = store.apply(conn, tenant, campaigns, contents).summary()
    if json_output:
        print_json(summary)
    else:
        _print_summary(summary)


@app.command("create")
def create_command(
    tenant: TenantOption,
    file: Annotated[Path, typer.Argument(help="A campaign's YAML file.", show_default=False)],
    postgres_url: PostgresUrlOption = None,
) -> None:
    """Store a new campaign from one YAML file (refused when the name exists); its content must be applied."""
    from activators.campaigns import store

    campaigns, contents = read_definitions([file])
    if len(campaigns) != 1 or contents:
        raise CampaignFileError(f"{file} is not a campaign definition (name, type, segment, content, ...)")
    with postgres_connection(postgres_url) as conn:
        store.create(conn, tenant, campaigns[0])
    console.print(
        f"created {campaigns[0].name} ({campaigns[0].status}); launch it with cdp campaign launch {campaigns[0].name}",
        highlight=False,
    )


@app.command("list")
def list_command(
    tenant: TenantOption,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """The tenant's campaigns: destination, status, segment, content, schedule, last launch."""
    from rich.table import Table

    from activators.campaigns import store

    with postgres_connection(postgres_url) as conn:
        campaigns = store.list_campaigns(conn, tenant)
    if json_output:
        print_json({"campaigns": [item.summary() for item in campaigns]})
        return
    view = Table("name", "type", "status", "segment", "content", "schedule", "last launch (UTC)")
    for item in campaigns:
        schedule = item.campaign.schedule
        when = f"{schedule.cron} {schedule.timezone}" if schedule and schedule.cron else ""
        view.add_row(
            item.name,
            item.campaign.type,
            item.status.value,
            item.campaign.segment,
            item.campaign.content or "",
            when,
            format_when(item.launched_at),
        )
    console.print(view)


@app.command("show")
def show_command(
    tenant: TenantOption,
    name: NameArgument,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """A campaign's definition and state, and its content's templates."""
    import yaml

    from activators.campaigns import store

    with postgres_connection(postgres_url) as conn:
        stored = store.get_campaign(conn, tenant, name)
        content = store.get_content(conn, tenant, stored.campaign.content) if stored.campaign.content else None
    payload = {**stored.summary(), "content_definition": content.to_json() if content else None}
    if json_output:
        print_json(payload)
        return
    console.print(yaml.safe_dump(payload, sort_keys=False, allow_unicode=True).rstrip(), highlight=False)


def _set_status(tenant: str, name: str, postgres_url: str | None, status: str) -> None:
    from activators.campaigns import store

    with postgres_connection(postgres_url) as conn:
        stored = store.set_status(conn, tenant, name, store.CampaignStatus(status))
    console.print(f"{name}: {stored.status}", highlight=False)


@app.command("pause")
def pause_command(tenant: TenantOption, name: NameArgument, postgres_url: PostgresUrlOption = None) -> None:
    """Pause an active campaign: nothing is launched until it is resumed."""
    _set_status(tenant, name, postgres_url, "paused")


@app.command("resume")
def resume_command(tenant: TenantOption, name: NameArgument, postgres_url: PostgresUrlOption = None) -> None:
    """Make a paused campaign active again."""
    _set_status(tenant, name, postgres_url, "active")


def _print_launch(result: LaunchResult) -> None:
    what = "dry run" if result.dry_run else "launched"
    kind = "every member" if result.first else "changes"
    console.print(
        f"{result.campaign} -> {result.destination}: {what}, refresh {result.refresh_id} ({kind}); "
        f"status {result.status}",
        highlight=False,
    )
    if result.resumed_refresh_id is not None:
        console.print(
            f"  finished the interrupted launch of refresh {result.resumed_refresh_id} first", highlight=False
        )
    for action, report in result.reports.items():
        counts = report.counts()
        shown = ", ".join(f"{key} {value}" for key, value in counts.items() if value)
        console.print(f"  {action}: {shown or 'nobody'}", highlight=False)


def _launch_options(dlq_url: str | None, processed_url: str | None, catalog_url: str | None) -> dict[str, Any]:
    from plugins.core.storage import ObjectStore
    from plugins.core.zones import Zone, resolve_zone_url
    from plugins.transforms.catalog import ProcessedZone

    return {
        "dlq": ObjectStore(resolve_zone_url(Zone.DLQ, dlq_url), setting="dlq_url"),
        "processed": ProcessedZone.resolve(processed_url, catalog_url),
    }


@app.command("launch")
def launch_command(
    tenant: TenantOption,
    name: NameArgument,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count and sample what would be sent; send nothing.")
    ] = False,
    postgres_url: PostgresUrlOption = None,
    exports_url: ExportsUrlOption = None,
    consent_mode: ConsentModeOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    dlq_url: DlqUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Refresh the segment, export it, and send: every member the first time, then who entered and who left."""
    from activators.campaigns.launch import launch

    with postgres_connection(postgres_url) as conn:
        result = launch(
            conn,
            tenant,
            name,
            dry_run=dry_run,
            exports_url=exports_url,
            consent_mode=consent_mode,
            **_launch_options(dlq_url, processed_url, catalog_url),
        )
    if json_output:
        print_json(result.summary())
    else:
        _print_launch(result)


@app.command("run")
def run_command(
    tenant: TenantOption,
    due: Annotated[bool, typer.Option("--due", help="Launch every campaign whose schedule fired.")] = False,
    postgres_url: PostgresUrlOption = None,
    exports_url: ExportsUrlOption = None,
    consent_mode: ConsentModeOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    dlq_url: DlqUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Launch every scheduled or active campaign whose cron fired (in its time zone) since its last launch; complete
    those whose end_at passed. A failing campaign does not stop the others (exit 1)."""
    from activators.campaigns import store
    from activators.campaigns.launch import launch

    if not due:
        raise typer.BadParameter("give --due")
    results: list[LaunchResult] = []
    failed: list[str] = []
    with postgres_connection(postgres_url) as conn:
        names, ended = store.due(conn, tenant, datetime.now(UTC))
        for each in ended:
            store.set_status(conn, tenant, each, store.CampaignStatus.COMPLETED)
            if not json_output:
                console.print(f"{each}: completed (its schedule ended)", highlight=False)
        options = _launch_options(dlq_url, processed_url, catalog_url) if names else {}
        for each in names:
            try:
                result = launch(conn, tenant, each, exports_url=exports_url, consent_mode=consent_mode, **options)
            except CdpError as exc:
                print_error(f"{each}: {exc}")  # one campaign's problem must not hold up the others
                failed.append(each)
                continue
            results.append(result)
            if not json_output:
                _print_launch(result)
    if json_output:
        print_json({"launches": [result.summary() for result in results], "completed": ended, "failed": failed})
    elif not names and not ended:
        err_console.print("no campaign is due", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("status")
def status_command(
    tenant: TenantOption,
    name: NameArgument,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """A campaign's status, its send counts from the send log (per action, variant and result), its last runs, and
    its engagement metrics once the feedback loop has recorded some."""
    from rich.table import Table

    from activators.campaigns.status import campaign_status

    with postgres_connection(postgres_url) as conn:
        status = campaign_status(conn, tenant, name)
    if json_output:
        print_json(status)
        return
    console.print(
        f"{name}: {status['status']} ({status['type']} to segment {status['segment']}); last launch "
        f"{format_when(status['launched_at'])}, refresh {status['last_refresh_id'] or '-'}",
        highlight=False,
    )
    sends = Table("action", "variant", "status", "members", title="send log")
    for row in status["sends"]:
        sends.add_row(row["action"], row["variant"] or "-", row["status"], str(row["members"]))
    console.print(sends)
    if status["metrics"]:
        columns = [key for key in status["metrics"][0] if key not in ("campaign",)]
        metrics = Table(*columns, title="campaign metrics")
        for row in status["metrics"]:
            metrics.add_row(*("" if row[key] is None else str(row[key]) for key in columns))
        console.print(metrics)


@app.command("preview")
def preview_command(
    tenant: TenantOption,
    name: NameArgument,
    sample: Annotated[int, typer.Option("--sample", min=1, max=1000, help="How many members to render.")] = 3,
    postgres_url: PostgresUrlOption = None,
    exports_url: ExportsUrlOption = None,
    consent_mode: ConsentModeOption = None,
    processed_url: ProcessedUrlOption = None,
    catalog_url: CatalogUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Render the content for a few members of the segment's latest export (refreshed and exported first when it has
    none for the channel); a missing variable or a template error fails here, before any launch."""
    from activators.campaigns.status import preview
    from plugins.transforms.catalog import ProcessedZone

    with postgres_connection(postgres_url) as conn:
        rendered = preview(
            conn,
            tenant,
            name,
            sample=sample,
            exports_url=exports_url,
            consent_mode=consent_mode,
            processed=ProcessedZone.resolve(processed_url, catalog_url),
        )
    if json_output:
        print_json(rendered)
        return
    console.print(
        f"{name}: refresh {rendered['refresh_id']}, {rendered['members']} members; {len(rendered['sample'])}"
        " rendered (nothing sent)",
        highlight=False,
    )
    for row in rendered["sample"]:
        console.print(f"--- {row['customer_id']} (variant {row['variant'] or '-'})", highlight=False)
        console.print(f"Subject: {row['subject']}", highlight=False)
        console.print(row["text"], highlight=False)
        if row["html"] is not None:
            console.print(f"[html] {row['html']}", highlight=False)


@app.command("metrics")
def metrics_command(
    tenant: TenantOption,
    name: Annotated[str | None, typer.Argument(help="One campaign; all of them without it.")] = None,
    postgres_url: PostgresUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Apply the loaded feedback (hard bounces, complaints, unsubscribes) to the suppression list, (re)create the
    campaign_metrics view and print it per campaign and variant (docs/activation.md#feedback-loop)."""
    from rich.table import Table

    from activators.campaigns.metrics import apply_feedback_suppressions, campaign_metrics, ensure_metrics_view

    with postgres_connection(postgres_url) as conn:
        suppressed = apply_feedback_suppressions(conn, tenant)
        ensure_metrics_view(conn, tenant)
        rows = campaign_metrics(conn, tenant, name)
    if json_output:
        print_json({"suppressed": suppressed, "metrics": rows})
        return
    console.print(f"{suppressed} address(es) newly suppressed from feedback", highlight=False)
    if rows:
        table = Table(*rows[0], title="campaign metrics")
        for row in rows:
            table.add_row(*("" if value is None else str(value) for value in row.values()))
        console.print(table)
