"""The load runner: every table of the asked tenants into every asked store, incrementally unless told otherwise.

For each (tenant, table, store): the store says which snapshot it holds (``Loader.loaded_snapshot``), the runner plans
the diff to the table's current snapshot (:mod:`plugins.loaders.changes`) and hands it to the loader. A store that
already holds the current snapshot is not called. A store that holds nothing, or a snapshot the table no longer has
(expired) or never had, gets a full refresh, and the summary says why in one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.descriptors import LoadMode, LoadRequest, LoadResult, RollbackLoader, TransformDescriptor
from plugins.loaders.changes import plan_changes
from plugins.transforms.catalog import load_table, table_identifier

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

    from plugins.descriptors import Loader

logger = logging.getLogger(__name__)


class LoadError(CdpError):
    """A load cannot run as asked (an unknown table or tenant, a store that cannot roll back)."""


@dataclass(frozen=True)
class TableLoad:
    """One table loaded into one store: what the loader did, in which mode, and why a full load when it fell back."""

    tenant: str
    table: str
    destination: str
    mode: LoadMode
    result: LoadResult
    skipped: bool = False  # The store already held the current snapshot.
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """The ``--json`` form."""
        result = self.result
        return {
            "tenant": self.tenant,
            "table": self.table,
            "destination": self.destination,
            "mode": self.mode.value,
            "snapshot_id": result.snapshot_id,
            "inserted": result.inserted,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "deleted": result.deleted,
            "seconds": round(result.seconds, 3),
            "skipped": self.skipped,
            "note": self.note,
        }


@dataclass(frozen=True)
class LoadStatus:
    """Where a store stands for one table: the snapshot it holds against the table's latest."""

    tenant: str
    table: str
    destination: str
    loaded_snapshot_id: int | None
    latest_snapshot_id: int | None
    snapshots_behind: int | None  # None: the loaded snapshot is not in the table's history (or nothing loaded).
    lag_seconds: float | None  # Commit time of the latest snapshot minus that of the loaded one.

    @property
    def up_to_date(self) -> bool:
        return self.loaded_snapshot_id == self.latest_snapshot_id


def table_keys(transforms: Iterable[TransformDescriptor]) -> dict[str, Sequence[str]]:
    """The key of every table a transform writes, by table name."""
    return {transform.output: tuple(transform.key) for transform in transforms}


def tables_to_load(
    catalog: SqlCatalog, keys: Mapping[str, Sequence[str]], tenants: Sequence[str] = (), tables: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """``(tenant, table)`` pairs: the asked ones, else every keyed table (one a transform writes) of every tenant."""
    chosen_tenants = list(tenants) or sorted(namespace[0] for namespace in catalog.list_namespaces())
    found: list[tuple[str, str]] = []
    for tenant in chosen_tenants:
        table_identifier(tenant, "t")  # Checks the tenant's name.
        existing = {identifier[-1] for identifier in catalog.list_tables(tenant)}
        if tables:
            for table in tables:
                if table not in existing:
                    raise LoadError(f"table '{tenant}.{table}' does not exist; run its transform first")
                found.append((tenant, table))
        else:
            found.extend((tenant, table) for table in sorted(existing) if table in keys)
    return found


def load_one(
    loader: Loader,
    destination: str,
    table: Table,
    tenant: str,
    key: Sequence[str],
    *,
    full_refresh: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> TableLoad:
    """Bring one store to ``table``'s current snapshot."""
    name = table.name()[-1]
    current = table.current_snapshot()
    if current is None:
        result = LoadResult(table=name, snapshot_id=0)
        return TableLoad(tenant, name, destination, LoadMode.INCREMENTAL, result, skipped=True, note="no snapshot yet")
    started = time.monotonic()
    loaded = None if full_refresh else loader.loaded_snapshot(tenant, name)
    if loaded == current.snapshot_id:
        result = LoadResult(table=name, snapshot_id=loaded)
        return TableLoad(tenant, name, destination, LoadMode.INCREMENTAL, result, skipped=True, note="up to date")
    changes = plan_changes(table, key, current.snapshot_id, loaded)
    mode = LoadMode.FULL_REFRESH if changes.complete else LoadMode.INCREMENTAL
    note = f"{changes.reason}; loading everything" if changes.reason else ""
    if note:
        log_event(logger, "load_fell_back_to_full", level=logging.WARNING, tenant=tenant, table=name, reason=note)
    request = LoadRequest(
        tenant=tenant,
        table=name,
        snapshot_id=current.snapshot_id,
        previous_snapshot_id=loaded,
        mode=mode,
        settings=settings or {},
        changes=changes,
    )
    result = loader.load(request)
    if not result.seconds:
        result = LoadResult(**{**result.__dict__, "seconds": time.monotonic() - started})
    log_event(logger, "table_loaded", tenant=tenant, destination=destination, mode=mode.value, **result.__dict__)
    return TableLoad(tenant, name, destination, mode, result, note=note)


def load_tables(
    catalog: SqlCatalog,
    loaders: Mapping[str, Loader],
    keys: Mapping[str, Sequence[str]],
    *,
    tenants: Sequence[str] = (),
    tables: Sequence[str] = (),
    full_refresh: bool = False,
    on_loaded: Callable[[TableLoad], None] | None = None,
) -> list[TableLoad]:
    """Load every asked table into every store in ``loaders`` (by destination name); one :class:`TableLoad` each."""
    done: list[TableLoad] = []
    for tenant, name in tables_to_load(catalog, keys, tenants, tables):
        table = load_table(catalog, tenant, name)
        key = keys.get(name) or tuple(table.schema().identifier_field_names())
        for destination, loader in loaders.items():
            loaded = load_one(loader, destination, table, tenant, key, full_refresh=full_refresh)
            done.append(loaded)
            if on_loaded is not None:
                on_loaded(loaded)
    return done


def load_status(
    catalog: SqlCatalog,
    loaders: Mapping[str, Loader],
    keys: Mapping[str, Sequence[str]],
    *,
    tenants: Sequence[str] = (),
    tables: Sequence[str] = (),
) -> list[LoadStatus]:
    """Per table and store: the snapshot loaded, the latest, how many snapshots and seconds behind."""
    from pyiceberg.table.snapshots import ancestors_between

    statuses = []
    for tenant, name in tables_to_load(catalog, keys, tenants, tables):
        table = load_table(catalog, tenant, name)
        latest = table.current_snapshot()
        for destination, loader in loaders.items():
            loaded_id = loader.loaded_snapshot(tenant, name)
            loaded = table.snapshot_by_id(loaded_id) if loaded_id is not None else None
            behind: int | None = None
            lag: float | None = None
            if latest is not None and loaded is not None:
                chain = [snapshot.snapshot_id for snapshot in ancestors_between(loaded, latest, table.metadata)]
                if loaded.snapshot_id == latest.snapshot_id:
                    behind = 0
                elif chain and chain[-1] == loaded.snapshot_id:
                    behind = len(chain) - 1
                lag = max(0.0, (latest.timestamp_ms - loaded.timestamp_ms) / 1000)
            statuses.append(
                LoadStatus(
                    tenant,
                    name,
                    destination,
                    loaded_id,
                    latest.snapshot_id if latest else None,
                    behind,
                    lag,
                )
            )
    return statuses


def rollback(loader: Loader, destination: str, tenant: str, table: str) -> int | None:
    """Put back the table a store replaced on its last full refresh; the snapshot it holds now."""
    table_identifier(tenant, table)
    if not isinstance(loader, RollbackLoader):
        raise LoadError(f"destination '{destination}' keeps no previous table; it cannot roll back")
    snapshot = loader.rollback(tenant, table)
    log_event(logger, "load_rolled_back", tenant=tenant, table=table, destination=destination, snapshot_id=snapshot)
    return snapshot
