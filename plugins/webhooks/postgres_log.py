"""The shared webhook log: one PostgreSQL table, so several receivers can run behind a load balancer.

Each group commit is one multi-row ``INSERT ... ON CONFLICT DO NOTHING`` in one transaction; the unique key
``(tenant, provider, event_id)`` drops duplicates across every receiver. Rows carry the inserting transaction's id
(``xid8``); readers order by ``(txid, seq)`` and only read rows of transactions older than every one still running
(``pg_snapshot_xmin``), so a row committed late by a slow receiver can never land behind a reader's bookmark.
Positions are ``{log id}:{txid:020d}:{seq:020d}``; the log id is made with the tables (``cdp_webhook_meta``), so a
bookmark from a dropped and recreated log is recognised. Consumer positions live in a small second table.
"""

# ruff: noqa: S608  # Table names are module constants; every value is a bound parameter.

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson

from plugins.core.errors import StorageError
from plugins.core.serialization import loads
from plugins.webhooks.group_commit import GroupCommitWriter, WriteResult
from plugins.webhooks.log import BookmarkError, CompactionResult, DurationHistogram, LogEntry, StoredEntry

TABLE = "cdp_webhook_log"
CONSUMERS_TABLE = "cdp_webhook_consumers"
META_TABLE = "cdp_webhook_meta"
_ROWS_PER_STATEMENT = 1000
_READ_PAGE = 5000

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant text NOT NULL,
    provider text NOT NULL,
    stream text NOT NULL,
    event_id text NOT NULL,
    topic text NOT NULL,
    received_at timestamptz NOT NULL,
    payload jsonb NOT NULL,
    UNIQUE (tenant, provider, event_id)
);
CREATE INDEX IF NOT EXISTS {TABLE}_stream_order ON {TABLE} (tenant, provider, stream, txid, seq);
CREATE TABLE IF NOT EXISTS {CONSUMERS_TABLE} (
    consumer text PRIMARY KEY,
    position text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {META_TABLE} (key text PRIMARY KEY, value text NOT NULL);
"""


def _parse_position(position: str | None) -> tuple[str | None, int, int]:
    """``(log id, txid, seq)``; the id is None for positions written before logs had one."""
    if not position:
        return None, 0, 0
    parts = position.split(":")
    if len(parts) == 2:
        parts.insert(0, "")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise BookmarkError(f"'{position}' is not a position of a PostgreSQL webhook log")
    return parts[0] or None, int(parts[1]), int(parts[2])


class PostgresWebhookLog:
    """The log in PostgreSQL (psycopg 3). The tables are created on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._writer: GroupCommitWriter[LogEntry] | None = None
        self._write_conn: Any = None
        self._schema_ready = False
        self._identity: str | None = None

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.url)
        except psycopg.OperationalError as exc:
            raise StorageError(f"cannot connect to the webhook log database: {exc}".splitlines()[0]) from exc
        if not self._schema_ready:
            with conn.transaction():
                conn.execute(f"SELECT pg_advisory_xact_lock(hashtext('{TABLE}'))")
                conn.execute(_SCHEMA)
                conn.execute(
                    f"INSERT INTO {META_TABLE} (key, value) VALUES ('log_id', %s) ON CONFLICT (key) DO NOTHING",
                    (f"w{uuid.uuid4().hex[:15]}",),  # A letter first: sorts after every older, all-digit position.
                )
                row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'log_id'").fetchone()
            self._identity = str(row[0]) if row else None
            self._schema_ready = True
        return conn

    @property
    def identity(self) -> str | None:
        if not self._schema_ready:
            self._connect().close()
        return self._identity

    def _position(self, txid: int, seq: int) -> str:
        return f"{self._identity}:{txid:020d}:{seq:020d}"

    # -- writing ----------------------------------------------------------------------------------------------
    def start_writer(self) -> None:
        if self._writer is not None:
            return
        self._write_conn = self._connect()
        self._writer = GroupCommitWriter(self._write_batch)

    def _write_batch(self, entries: list[LogEntry]) -> WriteResult:
        """One transaction; durable when it commits, so there is no separate sync."""
        return self._insert(entries), None

    def _insert(self, entries: list[LogEntry]) -> list[bool]:
        conn = self._write_conn
        stored: set[tuple[str, str, str]] = set()
        with conn.transaction():
            for start in range(0, len(entries), _ROWS_PER_STATEMENT):
                chunk = entries[start : start + _ROWS_PER_STATEMENT]
                values = ",".join(["(%s,%s,%s,%s,%s,%s,%s::jsonb)"] * len(chunk))
                params: list[Any] = []
                for entry in chunk:
                    params += [
                        entry.tenant,
                        entry.provider,
                        entry.stream,
                        entry.event_id,
                        entry.topic,
                        datetime.fromisoformat(entry.received_at),
                        (entry.payload_json or orjson.dumps(entry.payload)).decode(),
                    ]
                sql = (
                    f"INSERT INTO {TABLE} (tenant, provider, stream, event_id, topic, received_at, payload) "
                    f"VALUES {values} ON CONFLICT (tenant, provider, event_id) DO NOTHING "
                    "RETURNING tenant, provider, event_id"
                )
                rows = conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
                stored.update((row[0], row[1], row[2]) for row in rows)
        flags = []
        for entry in entries:
            key = (entry.tenant, entry.provider, entry.event_id)
            flags.append(key in stored)
            stored.discard(key)  # A second copy in the same group is a duplicate.
        return flags

    async def append(self, entries: Sequence[LogEntry]) -> list[bool]:
        if self._writer is None:
            self.start_writer()
        assert self._writer is not None
        return await self._writer.submit(entries)

    def append_sync(self, entries: Sequence[LogEntry]) -> list[bool]:
        if self._writer is None:
            self.start_writer()
        assert self._writer is not None
        return self._writer.submit_sync(entries)

    @property
    def queue_depth(self) -> int:
        return self._writer.queue_depth if self._writer is not None else 0

    @property
    def failed(self) -> BaseException | None:
        return self._writer.failed if self._writer is not None else None

    def histograms(self) -> dict[str, DurationHistogram]:
        return {}  # A group is durable when its transaction commits; there is no separate sync to time.

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    # -- reading ----------------------------------------------------------------------------------------------
    def check_bookmark(self, position: str | None) -> None:
        log_id, txid, seq = _parse_position(position)
        own = self.identity
        if log_id is not None and log_id != own:
            raise BookmarkError(
                f"bookmark {position} belongs to another webhook log than this database's (id {own}); the log was "
                "recreated: reset the extractor's state (docs/webhooks.md)"
            )
        with self._connect() as conn:
            row = conn.execute(
                "SELECT pg_current_xact_id()::text::bigint, "
                f"coalesce((SELECT last_value FROM pg_sequences WHERE sequencename = '{TABLE}_seq_seq'), 0)"
            ).fetchone()
        current_txid, last_seq = (int(row[0]), int(row[1])) if row else (0, 0)
        if txid >= current_txid or seq > last_seq:
            raise BookmarkError(
                f"bookmark {position} is past the end of the webhook log (last sequence {last_seq}); the log was "
                "recreated: reset the extractor's state (docs/webhooks.md)"
            )

    def read(self, tenant: str, provider: str, stream: str, after: str | None = None) -> Iterator[StoredEntry]:
        _, txid, seq = _parse_position(after)
        with self._connect() as conn:
            while True:
                rows = conn.execute(
                    f"SELECT txid::text::bigint, seq, event_id, topic, received_at, payload::text FROM {TABLE} "
                    "WHERE tenant = %s AND provider = %s AND stream = %s "
                    "AND (txid, seq) > (%s::text::xid8, %s) AND txid < pg_snapshot_xmin(pg_current_snapshot()) "
                    "ORDER BY txid, seq LIMIT %s",
                    (tenant, provider, stream, str(txid), seq, _READ_PAGE),
                ).fetchall()
                conn.commit()
                for row_txid, row_seq, event_id, topic, received_at, payload in rows:
                    entry = LogEntry(tenant, provider, stream, event_id, topic, received_at.isoformat(), loads(payload))
                    yield StoredEntry(self._position(row_txid, row_seq), entry)
                if len(rows) < _READ_PAGE:
                    return
                txid, seq = rows[-1][0], rows[-1][1]

    # -- consumers and compaction -----------------------------------------------------------------------------
    def consumers(self) -> dict[str, str]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT consumer, position FROM {CONSUMERS_TABLE} ORDER BY consumer").fetchall()
        return {str(name): str(position) for name, position in rows}

    def commit(self, consumer: str, position: str) -> None:
        _parse_position(position)
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO {CONSUMERS_TABLE} (consumer, position) VALUES (%s, %s) "
                "ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, committed_at = now()",
                (consumer, position),
            )

    def compact(self) -> CompactionResult:
        own = self.identity
        deleted = 0
        with self._connect() as conn:
            for consumer, position in self.consumers().items():
                log_id, txid, seq = _parse_position(position)
                tenant, provider, stream = [*consumer.split("/", 2), "", ""][:3]
                if (log_id is not None and log_id != own) or not stream:
                    continue  # Another log's bookmark confirms nothing here.
                deleted += conn.execute(
                    f"DELETE FROM {TABLE} WHERE tenant = %s AND provider = %s AND stream = %s "
                    "AND (txid, seq) <= (%s::text::xid8, %s)",
                    (tenant, provider, stream, str(txid), seq),
                ).rowcount
            kept = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return CompactionResult(
            removed_units=deleted, removed_entries=deleted, kept_units=int(kept[0]) if kept else 0, details=[]
        )
