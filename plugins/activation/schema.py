"""The activation tables in the tenant's PostgreSQL schema: runs, the send log and suppressions."""

from __future__ import annotations

from typing import Any

from psycopg import Connection, sql

from plugins.core.layout import validate_name

_TABLES = (
    """CREATE TABLE IF NOT EXISTS {schema}.activation_runs (
        run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        campaign text NOT NULL,
        destination text NOT NULL,
        refresh_id bigint,
        dry_run boolean NOT NULL DEFAULT false,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        status text NOT NULL DEFAULT 'running',
        counts jsonb NOT NULL DEFAULT '{{}}'::jsonb
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.send_log (
        campaign text NOT NULL,
        customer_id text NOT NULL,
        variant text NOT NULL DEFAULT '',
        action text NOT NULL CHECK (action IN ('add', 'remove')),
        refresh_id bigint NOT NULL,
        run_id bigint,
        status text NOT NULL CHECK (status IN ('sending', 'accepted', 'rejected', 'failed', 'unconfirmed')),
        reason text,
        provider_reference text,
        attempts integer NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (campaign, customer_id, variant, action, refresh_id)
    )""",
    "CREATE INDEX IF NOT EXISTS send_log_status ON {schema}.send_log (campaign, status)",
    """CREATE TABLE IF NOT EXISTS {schema}.suppressions (
        channel text NOT NULL,
        address text NOT NULL,
        reason text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual')),
        customer_id text,
        campaign text,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (channel, address)
    )""",
)


def ensure_schema(conn: Connection[Any], tenant: str) -> None:
    """Create the tenant's schema and its ``activation_runs``, ``send_log`` and ``suppressions`` tables if missing;
    committed. Safe to call concurrently and on every run."""
    schema = sql.Identifier(validate_name("tenant", tenant))
    with conn.transaction():
        # Concurrent CREATE ... IF NOT EXISTS can still collide on the catalog; one lock per tenant serialises them.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('cdp_activation_schema'), hashtext(%s))", (tenant,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        for statement in _TABLES:
            conn.execute(sql.SQL(statement).format(schema=schema))
