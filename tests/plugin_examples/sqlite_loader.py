"""A real loader into SQLite: replaces a table's rows and records the loaded snapshot in one transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from plugins.descriptors import LoadRequest, LoadResult

Rows = Sequence[Mapping[str, Any]]


class SqliteLoader:
    """Loads ``rows_for(table, snapshot)`` into ``path``; the snapshot it holds is kept in ``_cdp_loaded``."""

    def __init__(self, path: str, rows_for: Callable[[str, int], Rows]) -> None:
        self.connection = sqlite3.connect(path)
        self.rows_for = rows_for
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS _cdp_loaded "
            "(tenant TEXT, tbl TEXT, snapshot INTEGER, PRIMARY KEY (tenant, tbl))"
        )

    def loaded_snapshot(self, tenant: str, table: str) -> int | None:
        row = self.connection.execute(
            "SELECT snapshot FROM _cdp_loaded WHERE tenant = ? AND tbl = ?", (tenant, table)
        ).fetchone()
        return None if row is None else int(row[0])

    def load(self, request: LoadRequest) -> LoadResult:
        started = time.monotonic()
        rows = self.rows_for(request.table, request.snapshot_id)
        columns = sorted(rows[0]) if rows else []
        name = f"{request.tenant}__{request.table}"
        with self.connection:  # One transaction: the rows and the snapshot they came from.
            self.connection.execute(f'DROP TABLE IF EXISTS "{name}"')
            self.connection.execute(f'CREATE TABLE "{name}" ({", ".join(columns) or "empty"})')
            if rows:
                marks = ", ".join("?" for _ in columns)
                self.connection.executemany(
                    f'INSERT INTO "{name}" VALUES ({marks})', [[row[c] for c in columns] for row in rows]
                )
            self.connection.execute(
                "INSERT OR REPLACE INTO _cdp_loaded VALUES (?, ?, ?)",
                (request.tenant, request.table, request.snapshot_id),
            )
        return LoadResult(
            table=request.table, snapshot_id=request.snapshot_id, inserted=len(rows), seconds=time.monotonic() - started
        )
