"""Launching a campaign: refresh its segment, export the refresh for the destination's channel, send the change.

:func:`launch` (``cdp campaign launch NAME``, ``cdp campaign run --due``):

1. finishes a launch that did not finish (the campaign's ``pending_refresh_id``): the same refresh's export is read
   again and delivered again; the send log skips whoever was already sent (at most once);
2. refreshes the segment (``activators.segments.store.refresh``) and exports the refresh as Parquet for the
   destination's channel (``export_refresh``: consent and erasure applied);
3. checks the content's declared variables against the export's columns: a missing one stops the launch here;
4. the first launch adds every member; a later one adds who entered and removes who left since the refresh the
   campaign last sent (across every refresh in between, when other processes refreshed the segment meanwhile);
5. reads the export in Arrow batches (never the database row by row), builds one ``Delivery`` per member (its A/B
   variant, the content rendered for it on content channels, ``idempotency_key`` ``campaign:customer_id:variant``)
   and hands them to ``plugins.activation.deliver`` (batching, rate limit, retries, consent, suppressions, the send
   log and an ``activation_runs`` row per action);
6. records the refresh as sent and moves the campaign to ``active``.

A dry run does steps 2 to 5 with ``deliver(dry_run=True)``: nothing is sent and the campaign is not changed (the
segment refresh it made stays: the next launch sends its changes too).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from activators.campaigns.content import assign_variant, check_columns, render
from activators.campaigns.store import (
    CampaignError,
    CampaignStatus,
    Content,
    StoredCampaign,
    check_transition,
    get_campaign,
    get_content,
    record_launch,
    settings_env_var,
)
from plugins.core.events import log_event
from plugins.descriptors import Delivery

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import Connection

    from activators.segments.export import ExportManifest
    from plugins.activation import DeliveryReport, DeliverySettings
    from plugins.core.storage import ObjectStore
    from plugins.descriptors import ActivatorDescriptor, Sender
    from plugins.transforms.catalog import ProcessedZone

logger = logging.getLogger(__name__)


class CampaignLaunchError(CampaignError):
    """A launch that cannot run now (a paused or completed campaign, an unknown destination, a missing setting)."""


class CampaignBusyError(CampaignLaunchError):
    """Another process is launching the same campaign right now."""


@dataclass
class LaunchResult:
    """What one launch did: the refresh it sent, and the delivery engine's report per action."""

    campaign: str
    destination: str
    refresh_id: int
    first: bool
    dry_run: bool
    status: str
    reports: dict[str, DeliveryReport] = field(default_factory=dict)
    resumed_refresh_id: int | None = None
    resumed_reports: dict[str, DeliveryReport] = field(default_factory=dict)
    export_counts: Mapping[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Stable keys for ``--json``."""
        return {
            "campaign": self.campaign,
            "destination": self.destination,
            "refresh_id": self.refresh_id,
            "first": self.first,
            "dry_run": self.dry_run,
            "status": self.status,
            "resumed_refresh_id": self.resumed_refresh_id,
            "resumed_reports": {action: report.as_dict() for action, report in self.resumed_reports.items()},
            "export_counts": dict(self.export_counts),
            "reports": {action: report.as_dict() for action, report in self.reports.items()},
        }


# -- the destination and its settings --------------------------------------------------------------------------------


def destination_for(campaign: StoredCampaign) -> ActivatorDescriptor:
    """The activation destination the campaign's ``type`` names."""
    from plugins.manager import activators

    destinations = activators()
    if campaign.campaign.type not in destinations:
        known = ", ".join(sorted(destinations)) or "none installed"
        raise CampaignLaunchError(
            f"campaign '{campaign.name}': no activation destination '{campaign.campaign.type}' ({known})"
        )
    return destinations[campaign.campaign.type]


def sender_settings(destination: ActivatorDescriptor, campaign: StoredCampaign, tenant: str) -> dict[str, Any]:
    """The campaign's (non-secret) ``settings``, then each setting of the destination's schema found in the
    environment (``CDP_{DESTINATION}_{KEY}``: tokens, passwords), the environment winning; ``tenant`` and
    ``campaign`` when the schema names them."""
    settings = dict(campaign.campaign.settings)
    properties = destination.settings_schema.get("properties", {})
    for key in ("tenant", "campaign"):  # who is sending, for destinations that say they take it (unsubscribe links)
        if isinstance(properties, Mapping) and key in properties:
            settings[key] = tenant if key == "tenant" else campaign.name
    for key in properties if isinstance(properties, Mapping) else ():
        value = os.environ.get(settings_env_var(destination.name, key))
        if value is not None:
            settings[key] = value
    required = destination.settings_schema.get("required", [])
    missing = [key for key in required if key not in settings]
    if missing:
        raise CampaignLaunchError(
            f"campaign '{campaign.name}': destination '{destination.name}' needs setting '{missing[0]}'; set it in "
            f"the campaign's settings or, for a secret, in {settings_env_var(destination.name, missing[0])}"
        )
    return settings


# -- what to send ----------------------------------------------------------------------------------------------------


def _net_changes(
    conn: Connection[Any], tenant: str, segment: str, after: int, upto: int
) -> tuple[list[int], list[str], list[str]]:
    """``(refresh ids, entered, left)``: the segment's refreshes in ``(after, upto]``, newest first, and who is in now
    but was not after ``after`` (entered), and the reverse (left), from every refresh's recorded changes."""
    changes = sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier("segment_member_changes"))
    refreshes = sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier("segment_refreshes"))
    ids = [
        int(row[0])
        for row in conn.execute(
            sql.SQL(
                "SELECT refresh_id FROM {} WHERE segment = %s AND refresh_id > %s AND refresh_id <= %s "
                "ORDER BY refresh_id DESC"
            ).format(refreshes),
            (segment, after, upto),
        ).fetchall()
    ]
    # A member's first change in the range says whether they were in before it (their first change was 'left'), the
    # last whether they are in now ('entered').
    rows = conn.execute(
        sql.SQL(
            "SELECT customer_id, (array_agg(change ORDER BY refresh_id))[1], "
            "(array_agg(change ORDER BY refresh_id DESC))[1] FROM {} "
            "WHERE segment = %s AND refresh_id > %s AND refresh_id <= %s GROUP BY customer_id"
        ).format(changes),
        (segment, after, upto),
    ).fetchall()
    entered = [row[0] for row in rows if row[1] == "entered" and row[2] == "entered"]
    left = [row[0] for row in rows if row[1] == "left" and row[2] == "left"]
    return ids, entered, left


def _filtered(batches: Iterable[pa.RecordBatch], ids: Iterable[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(list(ids), pa.string())
    for batch in batches:
        kept = batch.filter(pc.is_in(batch.column("customer_id"), value_set=wanted))
        if kept.num_rows:
            yield kept


def _removals(manifests: list[ExportManifest], exports_url: str, left: list[str]) -> Iterator[pa.RecordBatch]:
    """Who left, each with the row of the newest finished export whose ``left/`` has them (the contact columns a
    destination removes by); someone no export has (a refresh that was never exported) by ``customer_id`` alone."""
    import pyarrow as pa

    from activators.segments.export import export_batches

    missing = set(left)
    for manifest in manifests:
        if not missing:
            return
        for batch in _filtered(export_batches(manifest, "left", exports_url), missing):
            missing.difference_update(batch.column("customer_id").to_pylist())
            if batch.num_rows:
                yield batch
    if missing:
        yield pa.RecordBatch.from_pydict({"customer_id": pa.array(sorted(missing), pa.string())})


def _plan(
    conn: Connection[Any],
    tenant: str,
    campaign: StoredCampaign,
    manifest: ExportManifest,
    exports_url: str,
    previous: int | None,
) -> dict[str, Iterable[pa.RecordBatch]]:
    """The Arrow batches to add and to remove for the refresh ``manifest`` exported, after ``previous``."""
    from activators.segments.export import UntrustedExportError, export_batches, read_export

    if previous is None:
        return {"add": export_batches(manifest, "members", exports_url)}
    segment = campaign.campaign.segment
    refreshes, entered, left = _net_changes(conn, tenant, segment, previous, manifest.refresh_id)
    if len(refreshes) <= 1:
        return {
            "add": export_batches(manifest, "entered", exports_url),
            "remove": export_batches(manifest, "left", exports_url),
        }
    manifests = [manifest]
    for refresh_id in refreshes:
        if refresh_id == manifest.refresh_id:
            continue
        try:
            manifests.append(read_export(exports_url, tenant, segment, refresh_id, verify=False))
        except UntrustedExportError:
            continue  # that refresh was never exported (or not finished): its leavers go by customer_id
    return {
        "add": _filtered(export_batches(manifest, "members", exports_url), entered),
        "remove": _removals(manifests, exports_url, left),
    }


def deliveries(
    campaign: str, batches: Iterable[pa.RecordBatch], content: Content | None, *, render_content: bool
) -> Iterator[Delivery]:
    """One Delivery per row: the member's variant (stable: a hash), the rendered content when asked."""
    variants = content.variants if content is not None else ()
    for batch in batches:
        for row in batch.to_pylist():
            customer_id = str(row["customer_id"])
            variant = assign_variant(campaign, customer_id, variants)
            rendered = render(content, variant, row) if render_content and content is not None else None
            yield Delivery(
                member_id=customer_id,
                columns=row,
                idempotency_key=f"{campaign}:{customer_id}:{variant}",
                variant=variant,
                content=rendered,
            )


# -- launch ----------------------------------------------------------------------------------------------------------


def _export(
    conn: Connection[Any],
    tenant: str,
    campaign: StoredCampaign,
    destination: ActivatorDescriptor,
    exports_url: str,
    processed: ProcessedZone | None,
    consent_mode: str | None,
) -> ExportManifest:
    from activators.segments import store as segments
    from activators.segments.export import export_refresh

    refreshed = segments.refresh(conn, tenant, campaign.campaign.segment)
    return export_refresh(
        conn,
        tenant,
        campaign.campaign.segment,
        refreshed.refresh_id,
        exports_url,
        channel=destination.channel,
        processed=processed,
        consent_mode=consent_mode,
    )


def _send(
    conn: Connection[Any],
    tenant: str,
    campaign: StoredCampaign,
    content: Content | None,
    destination: ActivatorDescriptor,
    sender: Sender,
    manifest: ExportManifest,
    exports_url: str,
    previous: int | None,
    *,
    dry_run: bool,
    options: Mapping[str, Any],
) -> dict[str, DeliveryReport]:
    from plugins.activation import deliver

    reports: dict[str, DeliveryReport] = {}
    for action, batches in _plan(conn, tenant, campaign, manifest, exports_url, previous).items():
        reports[action] = deliver(
            conn,
            tenant,
            campaign=campaign.name,
            destination=destination,
            sender=sender,
            refresh_id=manifest.refresh_id,
            action="add" if action == "add" else "remove",
            deliveries=deliveries(
                campaign.name, batches, content, render_content=destination.content and action == "add"
            ),
            dry_run=dry_run,
            **options,
        )
    return reports


def _activate(conn: Connection[Any], tenant: str, campaign: StoredCampaign) -> str:
    """draft -> scheduled -> active, each step through the status machine; the status after."""
    from activators.campaigns.store import set_status

    status = campaign.status
    if status is CampaignStatus.DRAFT:
        status = set_status(conn, tenant, campaign.name, CampaignStatus.SCHEDULED).status
    if status is CampaignStatus.SCHEDULED:
        status = set_status(conn, tenant, campaign.name, CampaignStatus.ACTIVE).status
    return status.value


def launch(
    conn: Connection[Any],
    tenant: str,
    campaign: str,
    *,
    dry_run: bool = False,
    exports_url: str | None = None,
    processed: ProcessedZone | None = None,
    consent_mode: str | None = None,
    delivery_settings: DeliverySettings | None = None,
    dlq: ObjectStore | None = None,
    sender: Sender | None = None,
) -> LaunchResult:
    """Launch ``campaign`` (see the module docstring). ``conn`` is an autocommit connection. ``sender`` replaces the
    one the destination's factory would build from the campaign's settings (tests, embedding)."""
    key = f"cdp_campaigns.launch:{tenant}:{campaign}"
    row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if row is None or not row[0]:
        # Two launches of one campaign at once would each record the refresh they send and could send it twice.
        raise CampaignBusyError(f"campaign '{campaign}' is being launched by another process; wait for it to finish")
    try:
        return _launch(
            conn,
            tenant,
            campaign,
            dry_run=dry_run,
            exports_url=exports_url,
            processed=processed,
            consent_mode=consent_mode,
            delivery_settings=delivery_settings,
            dlq=dlq,
            sender=sender,
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _launch(
    conn: Connection[Any],
    tenant: str,
    campaign: str,
    *,
    dry_run: bool = False,
    exports_url: str | None = None,
    processed: ProcessedZone | None = None,
    consent_mode: str | None = None,
    delivery_settings: DeliverySettings | None = None,
    dlq: ObjectStore | None = None,
    sender: Sender | None = None,
) -> LaunchResult:
    from activators.segments.export import read_export, read_tombstones, resolve_exports_url

    exports = resolve_exports_url(exports_url)
    stored = get_campaign(conn, tenant, campaign)
    if stored.status in (CampaignStatus.PAUSED, CampaignStatus.COMPLETED):
        hint = f"cdp campaign resume {campaign} first" if stored.status is CampaignStatus.PAUSED else "it is final"
        raise CampaignLaunchError(f"campaign '{campaign}' is {stored.status}: it is not launched ({hint})")
    if not dry_run and stored.status is not CampaignStatus.ACTIVE:
        check_transition(
            campaign,
            CampaignStatus.SCHEDULED if stored.status is CampaignStatus.DRAFT else stored.status,
            CampaignStatus.ACTIVE,
        )
    destination = destination_for(stored)
    content = get_content(conn, tenant, stored.campaign.content) if stored.campaign.content else None
    settings = sender_settings(destination, stored, tenant)
    options: dict[str, Any] = {
        "tombstones": read_tombstones(processed, tenant),
        "dlq": dlq,
        "sender_settings": settings,
        "settings": delivery_settings,
    }
    active = sender or destination.load_sender()(settings)
    reports: dict[str, DeliveryReport] = {}
    resumed_reports: dict[str, DeliveryReport] = {}
    resumed: int | None = None
    try:
        previous = stored.last_refresh_id
        if stored.pending_refresh_id is not None and not dry_run:
            # The previous launch stopped part way: send the rest of its refresh first (the send log skips whoever
            # it reached), so the changes it covered are not lost and nobody is sent twice.
            resumed = stored.pending_refresh_id
            pending = read_export(exports, tenant, stored.campaign.segment, resumed)
            if content is not None:
                check_columns(content, _columns(pending), campaign=campaign)
            resumed_reports = _send(
                conn,
                tenant,
                stored,
                content,
                destination,
                active,
                pending,
                exports,
                previous,
                dry_run=False,
                options=options,
            )
            record_launch(conn, tenant, campaign, pending_refresh_id=None, last_refresh_id=resumed)
            previous = resumed
        manifest = _export(conn, tenant, stored, destination, exports, processed, consent_mode)
        if content is not None:
            check_columns(content, _columns(manifest), campaign=campaign)
        if not dry_run:
            record_launch(conn, tenant, campaign, pending_refresh_id=manifest.refresh_id, last_refresh_id=previous)
        reports = _send(
            conn,
            tenant,
            stored,
            content,
            destination,
            active,
            manifest,
            exports,
            previous,
            dry_run=dry_run,
            options=options,
        )
    finally:
        if sender is None:
            active.close()
    status = stored.status.value
    if not dry_run:
        record_launch(conn, tenant, campaign, pending_refresh_id=None, last_refresh_id=manifest.refresh_id)
        status = _activate(conn, tenant, stored)
    result = LaunchResult(
        campaign=campaign,
        destination=destination.name,
        refresh_id=manifest.refresh_id,
        first=previous is None,
        dry_run=dry_run,
        status=status,
        reports=reports,
        resumed_refresh_id=resumed,
        resumed_reports=resumed_reports,
        export_counts=manifest.counts,
    )
    log_event(
        logger,
        "campaign_launched",
        tenant=tenant,
        campaign=campaign,
        destination=destination.name,
        refresh_id=manifest.refresh_id,
        dry_run=dry_run,
        first=result.first,
        counts={action: report.counts() for action, report in reports.items()},
    )
    return result


def _columns(manifest: ExportManifest) -> list[str]:
    return [str(column["name"]) for column in manifest.schema.get("members", [])]
