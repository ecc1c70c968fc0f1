"""What ``cdp campaign status`` and ``cdp campaign preview`` read: send counts, runs, metrics, rendered samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

from activators.campaigns.content import assign_variant, check_columns, render
from activators.campaigns.store import CampaignError, get_campaign, get_content

if TYPE_CHECKING:
    from psycopg import Connection

    from plugins.transforms.catalog import ProcessedZone


def _exists(conn: Connection[Any], tenant: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (tenant, table)).fetchone()
    return row is not None and row[0] is not None


def _has_column(conn: Connection[Any], tenant: str, table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (tenant, table, column),
    ).fetchone()
    return row is not None


def _table(tenant: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier(name))


def campaign_status(conn: Connection[Any], tenant: str, name: str) -> dict[str, Any]:
    """The campaign's state; ``sends``: members per action, variant and send-log status; ``runs``: its last ten
    activation runs; ``metrics``: its ``campaign_metrics`` rows (the feedback loop's), when that table exists."""
    stored = get_campaign(conn, tenant, name)
    sends: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    if _exists(conn, tenant, "send_log"):
        rows = conn.execute(
            sql.SQL(
                "SELECT action, variant, status, count(*) FROM {} WHERE campaign = %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ).format(_table(tenant, "send_log")),
            (name,),
        ).fetchall()
        sends = [{"action": row[0], "variant": row[1], "status": row[2], "members": int(row[3])} for row in rows]
    if _exists(conn, tenant, "activation_runs"):
        rows = conn.execute(
            sql.SQL(
                "SELECT run_id, destination, refresh_id, dry_run, started_at, finished_at, status, counts FROM {} "
                "WHERE campaign = %s ORDER BY run_id DESC LIMIT 10"
            ).format(_table(tenant, "activation_runs")),
            (name,),
        ).fetchall()
        keys = ("run_id", "destination", "refresh_id", "dry_run", "started_at", "finished_at", "status", "counts")
        runs = [dict(zip(keys, row, strict=True)) for row in rows]
    if _exists(conn, tenant, "campaign_metrics") and _has_column(conn, tenant, "campaign_metrics", "campaign"):
        cursor = conn.execute(
            sql.SQL("SELECT * FROM {} WHERE campaign = %s").format(_table(tenant, "campaign_metrics")), (name,)
        )
        names = [column.name for column in cursor.description or []]
        metrics = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {**stored.summary(), "sends": sends, "runs": runs, "metrics": metrics}


def preview(
    conn: Connection[Any],
    tenant: str,
    name: str,
    *,
    sample: int = 3,
    exports_url: str | None = None,
    consent_mode: str | None = None,
    processed: ProcessedZone | None = None,
) -> dict[str, Any]:
    """The content rendered for the first ``sample`` members of the segment's latest export for the destination's
    channel (the segment is refreshed and exported first when it has none). Nothing is sent; a declared variable
    the export lacks, or a template that fails for a member, is refused in one line."""
    from activators.campaigns.launch import destination_for
    from activators.segments import store as segments
    from activators.segments.export import (
        UntrustedExportError,
        export_batches,
        export_refresh,
        read_export,
        resolve_exports_url,
    )

    exports = resolve_exports_url(exports_url)
    stored = get_campaign(conn, tenant, name)
    if stored.campaign.content is None:
        raise CampaignError(f"campaign '{name}' has no content to preview")
    content = get_content(conn, tenant, stored.campaign.content)
    channel = destination_for(stored).channel
    segment = stored.campaign.segment
    latest = segments.get(conn, tenant, segment).last_refresh_id
    manifest = None
    if latest is not None:
        try:
            manifest = read_export(exports, tenant, segment, latest, verify=False)
        except UntrustedExportError:
            manifest = None
    if manifest is None or manifest.channel != channel:
        refreshed = segments.refresh(conn, tenant, segment)
        manifest = export_refresh(
            conn,
            tenant,
            segment,
            refreshed.refresh_id,
            exports,
            channel=channel,
            processed=processed,
            consent_mode=consent_mode,
        )
    check_columns(content, [str(column["name"]) for column in manifest.schema.get("members", [])], campaign=name)
    rendered: list[dict[str, Any]] = []
    for batch in export_batches(manifest, "members", exports):
        for row in batch.slice(0, sample - len(rendered)).to_pylist():
            customer_id = str(row["customer_id"])
            variant = assign_variant(name, customer_id, content.variants)
            out = render(content, variant, row)
            rendered.append(
                {
                    "customer_id": customer_id,
                    "variant": variant,
                    "subject": out.subject,
                    "text": out.text,
                    "html": out.html,
                }
            )
        if len(rendered) >= sample:
            break
    return {
        "campaign": name,
        "segment": segment,
        "refresh_id": manifest.refresh_id,
        "members": manifest.counts.get("members", 0),
        "sample": rendered,
    }
