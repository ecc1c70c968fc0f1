"""``campaign_metrics``: the feedback loop's counts per campaign and variant, in the tenant's PostgreSQL schema.

A **view** over the send log (``sent``: members whose add was accepted) and the loaded ``events`` table (the campaign
feedback rows of taps/campaign_events, whose ``payload`` carries campaign and variant). A view and not a table: it is
always exactly what the send log and the last load say, with nothing to refresh or to forget to refresh, and a
campaign's rows are a few aggregates over indexed tables. ``cdp campaign metrics`` (re)creates it, applies the
feedback's suppressions (:func:`apply_feedback_suppressions`) and prints it.

Counts are people, not events: a member who opened three times counts once in ``opened``. ``revenue`` sums the
``converted`` events' revenue (each event once). ``complaint_rate`` is complaints over delivered messages (over sent
when no delivery was reported), the ratio mailbox providers hold bulk senders to (Gmail: below 0.3 %).
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection, sql

from plugins.activation import ensure_schema, suppress
from plugins.core.errors import CdpError

METRICS_VIEW = "campaign_metrics"
FEEDBACK_OBJECT_TYPE = "campaign_event"  # transforms/events/transform.py: the campaign feedback rows' object_type
COUNTED_TYPES = ("delivered", "opened", "clicked", "bounced", "unsubscribed", "complained", "converted")
# What each feedback type does to the suppression list (plugins.activation.suppress's reasons).
SUPPRESSING_TYPES = {"complained": "complaint", "unsubscribed": "unsubscribe"}


class MetricsInputError(CdpError):
    """The tables campaign_metrics reads are not there yet."""


def _table(tenant: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier(name))


def _exists(conn: Connection[Any], tenant: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (tenant, table)).fetchone()
    return row is not None and row[0] is not None


def _feedback(tenant: str) -> sql.Composed:
    """The campaign feedback rows of ``events``: campaign, variant, type, the person, the parsed payload."""
    return sql.SQL(
        "SELECT e.payload::jsonb ->> 'campaign' AS campaign, coalesce(e.payload::jsonb ->> 'variant', '') AS variant, "
        "e.type, coalesce(e.customer_id_value, e.email) AS person, e.email, e.customer_id_value AS customer_id, "
        "e.payload::jsonb AS payload FROM {} AS e WHERE e.object_type = {}"
    ).format(_table(tenant, "events"), sql.Literal(FEEDBACK_OBJECT_TYPE))


def ensure_metrics_view(conn: Connection[Any], tenant: str) -> None:
    """Create (or replace) ``"tenant".campaign_metrics``; MetricsInputError before the first load of ``events``."""
    if not _exists(conn, tenant, "events"):
        raise MetricsInputError(
            f"tenant '{tenant}' has no events table yet: run the transforms and the load first (make demo, cdp load)"
        )
    ensure_schema(conn, tenant)
    counts = sql.SQL(", ").join(
        sql.SQL("count(DISTINCT person) FILTER (WHERE type = {}) AS {}").format(sql.Literal(kind), sql.Identifier(kind))
        for kind in COUNTED_TYPES
    )
    totals = sql.SQL(", ").join(
        sql.SQL("coalesce(f.{0}, 0) AS {0}").format(sql.Identifier(kind)) for kind in COUNTED_TYPES
    )
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE VIEW {view} AS "
            "WITH sent AS (SELECT campaign, variant, count(DISTINCT customer_id) AS sent FROM {send_log} "
            "  WHERE action = 'add' AND status = 'accepted' GROUP BY campaign, variant), "
            "feedback AS ({feedback}), "
            "counted AS (SELECT campaign, variant, {counts}, "
            "  sum((payload ->> 'revenue')::numeric) FILTER (WHERE type = 'converted') AS revenue "
            "  FROM feedback WHERE campaign IS NOT NULL GROUP BY campaign, variant) "
            "SELECT coalesce(s.campaign, f.campaign) AS campaign, coalesce(s.variant, f.variant) AS variant, "
            "coalesce(s.sent, 0) AS sent, {totals}, coalesce(f.revenue, 0) AS revenue, "
            "round(coalesce(f.complained, 0)::numeric / nullif(coalesce(nullif(f.delivered, 0), s.sent), 0), 4) "
            "  AS complaint_rate "
            "FROM sent AS s FULL JOIN counted AS f ON f.campaign = s.campaign AND f.variant = s.variant"
        ).format(
            view=_table(tenant, METRICS_VIEW),
            send_log=_table(tenant, "send_log"),
            feedback=_feedback(tenant),
            counts=counts,
            totals=totals,
        )
    )
    conn.commit()


def campaign_metrics(conn: Connection[Any], tenant: str, campaign: str | None = None) -> list[dict[str, Any]]:
    """The view's rows (one campaign's, or all), by campaign and variant."""
    where = sql.SQL(" WHERE campaign = %s") if campaign else sql.SQL("")
    cursor = conn.execute(
        sql.SQL("SELECT * FROM {}{} ORDER BY campaign, variant").format(_table(tenant, METRICS_VIEW), where),
        (campaign,) if campaign else None,
    )
    names = [column.name for column in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def apply_feedback_suppressions(conn: Connection[Any], tenant: str) -> int:
    """Suppress, on email, every address the loaded feedback reports as a hard bounce, a complaint or an unsubscribe
    (``plugins.activation.suppress``, idempotent); the number newly suppressed.

    Run after the events land (not from the receiver's handler): the receiver only stores durably before it answers
    and holds no database connection (its log may be files), and reading the loaded ``events`` also covers events
    replayed from the raw zone. The email one-click unsubscribe suppresses at once on its own (activators/email).
    """
    if not _exists(conn, tenant, "events"):
        raise MetricsInputError(f"tenant '{tenant}' has no events table yet: run the transforms and the load first")
    ensure_schema(conn, tenant)
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT ON (email) email, customer_id, campaign, type, payload ->> 'bounce_type' FROM ({}) AS f "
            "WHERE email IS NOT NULL AND (type IN ('complained', 'unsubscribed') "
            "OR (type = 'bounced' AND payload ->> 'bounce_type' = 'hard')) ORDER BY email, type"
        ).format(_feedback(tenant))
    ).fetchall()
    added = 0
    for email, customer_id, campaign, kind, _bounce in rows:
        reason = SUPPRESSING_TYPES.get(kind, "hard_bounce")
        added += suppress(conn, tenant, "email", email, reason, customer_id=customer_id, campaign=campaign)
    return added
