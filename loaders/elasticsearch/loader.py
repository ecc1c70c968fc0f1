"""The Elasticsearch / OpenSearch loader: each processed table behind an alias ``{tenant}_{table}``.

Incremental (the default): the rows of the files added since the loaded snapshot are indexed by ``_id`` (the table's
key: an upsert), the deleted keys deleted by ``_id``, through ``helpers.streaming_bulk`` (chunks, back-off on 429).

Full refresh (historic): every row into a new versioned index ``{tenant}_{table}_v{snapshot}`` (created from the
table's index template, replicas and refresh off while it loads), verified (the document count is the snapshot's rows
less the rejected ones, a sample of ids is found), then ONE ``_aliases`` call moves the alias from the old index to
the new: a search sees the old index or the new one, never a partial one. The replaced index is kept for ``rollback``
until the next swap (``keep_previous``), the one before it deleted.

Where the loaded snapshot is recorded: in the ``_meta`` of the live index's mapping (``_meta.cdp``), not in a state
index. A full refresh writes it into the new index before the swap, so the alias moves data and state in one atomic
call; a snapshot/restore of the index brings its state along, and a rollback (the alias back on the previous index)
brings back that index's snapshot with it. An incremental load writes it after its documents are refreshed: the
store has no transactions, but a crash in between only means the next run applies the same upserts and deletes by
``_id`` again, which leaves the same documents.

Per-document rejections (a mapping error, 4xx other than 429) go to the DLQ as ``load_rejected`` with the document
and the item's error; the load goes on. A cluster that keeps answering 429 past the retries, or fails a request,
fails the load (nothing recorded: the next run does it again).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from loaders.elasticsearch.mappings import document_bytes, document_id, has_maps, index_mappings
from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType, FieldError
from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.core.redaction import redact_url
from plugins.descriptors import LoadMode, LoadRequest, LoadResult, TableChanges

logger = logging.getLogger(__name__)

URL_ENV_VAR = "CDP_ES_URL"
FLAVOUR_ENV_VAR = "CDP_ES_FLAVOUR"
DEFAULT_URL = "http://127.0.0.1:9200"
FLAVOURS = ("elasticsearch", "opensearch")
META_KEY = "cdp"
TEMPLATE_PRIORITY = 200  # Above the built-in templates' 100.
DLQ_FLUSH = 5000  # Rejected documents held before they are written to the DLQ.


class SearchLoadError(CdpError):
    """A search load failed: the cluster unreachable or refusing, a verification, a concurrent load, a rollback."""


@dataclass
class _Counts:
    """What one bulk run did."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    rejected: int = 0
    sample: list[str] = field(default_factory=list)


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a client error (elasticsearch-py: ``meta.status``; opensearch-py: ``status_code``)."""
    meta = getattr(exc, "meta", None)
    status = getattr(meta, "status", None) or getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


class SearchLoader:
    """Loads processed tables into Elasticsearch (elasticsearch-py 8) or OpenSearch (opensearch-py).

    ``es_url`` (else ``CDP_ES_URL``, else ``http://127.0.0.1:9200``); ``flavour`` ``elasticsearch`` or ``opensearch``
    (else ``CDP_ES_FLAVOUR``); authentication by ``api_key`` (Elasticsearch) or ``username``/``password``;
    ``ca_certs`` to verify the cluster's TLS certificate. Secrets are never logged: the URL is logged without its
    user info. ``field_mappings`` (``{table: {column: mapping}}``) replace derived mappings of columns (a string
    column holding dates mapped as ``date``, say). ``dlq_url`` is where rejected documents go (else the DLQ zone:
    ``CDP_DLQ_URL``, the lake, ``data/dlq``).
    """

    def __init__(
        self,
        es_url: str | None = None,
        *,
        flavour: str | None = None,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_certs: str | None = None,
        chunk_size: int = 1000,
        max_chunk_bytes: int = 10 * 1024 * 1024,
        max_retries: int = 5,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        request_timeout: float = 60.0,
        number_of_shards: int = 1,
        number_of_replicas: int = 1,
        keep_previous: bool = True,
        verify_sample: int = 20,
        field_mappings: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        dlq_url: str | None = None,
    ) -> None:
        self.url = es_url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL
        self.flavour = (flavour or os.environ.get(FLAVOUR_ENV_VAR) or "elasticsearch").lower()
        if self.flavour not in FLAVOURS:
            raise SearchLoadError(f"flavour '{self.flavour}' is not one of {', '.join(FLAVOURS)}")
        self.opensearch = self.flavour == "opensearch"
        self.chunk_size = chunk_size
        self.max_chunk_bytes = max_chunk_bytes
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.number_of_shards = number_of_shards
        self.number_of_replicas = number_of_replicas
        self.keep_previous = keep_previous
        self.verify_sample = verify_sample
        self.dlq_url = dlq_url
        self.field_mappings = dict(field_mappings or {})
        auth = (username, password or "") if username else None
        if self.opensearch:
            if api_key:
                raise SearchLoadError("OpenSearch takes username and password, not an API key; unset api_key")
            from opensearchpy import OpenSearch, helpers

            self.client: Any = OpenSearch(
                hosts=[self.url],
                http_auth=auth,
                ca_certs=ca_certs,
                verify_certs=True,
                timeout=request_timeout,
                max_retries=3,
                retry_on_timeout=True,
            )
        else:
            from elasticsearch import Elasticsearch, helpers  # type: ignore[no-redef]

            self.client = Elasticsearch(
                self.url,
                api_key=api_key,
                basic_auth=auth,
                **_tls(ca_certs),
                request_timeout=request_timeout,
                max_retries=3,
                retry_on_timeout=True,
                # Not 429: the transport would retry it at once; streaming_bulk retries it with back-off.
                retry_on_status=(502, 503, 504),
            )
        self._streaming_bulk: Callable[..., Iterator[tuple[bool, dict[str, Any]]]] = helpers.streaming_bulk

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def __enter__(self) -> SearchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Client failures as one-line SearchLoadErrors naming the cluster (without credentials) and what failed."""
        try:
            yield
        except CdpError:
            raise
        except Exception as exc:
            if _status(exc) is None and "Connection" in type(exc).__name__:
                raise SearchLoadError(
                    f"cannot reach {self.flavour} at {redact_url(self.url)} ({what}): start it, or set --es-url / "
                    f"{URL_ENV_VAR}"
                ) from exc
            raise SearchLoadError(f"{self.flavour} at {redact_url(self.url)}: {what} failed: {exc}") from exc

    # -- names and state -------------------------------------------------------------------------------------------

    @staticmethod
    def alias_name(tenant: str, table: str) -> str:
        """The alias searches use: ``{tenant}_{table}``."""
        return f"{tenant}_{table}"

    def _versions(self, alias: str) -> re.Pattern[str]:
        """The names of the table's versioned indexes (and only its: ``acme_customers_vip_v1`` is another table's)."""
        return re.compile(rf"{re.escape(alias)}_v\d+(_[0-9a-f]{{8}})?")

    def live_index(self, tenant: str, table: str) -> str | None:
        """The index the alias points at, or None when there is no alias yet."""
        alias = self.alias_name(tenant, table)
        with self._talking(f"reading alias {alias}"):
            try:
                found = self.client.indices.get_alias(name=alias)
            except Exception as exc:
                if _status(exc) == 404:
                    return None
                raise
        indexes = sorted(found)
        if len(indexes) != 1:
            listed = ", ".join(indexes)
            raise SearchLoadError(f"alias {alias} points at {len(indexes)} indexes ({listed}); expected one")
        return str(indexes[0])

    def _meta(self, index: str) -> dict[str, Any]:
        with self._talking(f"reading the mapping of {index}"):
            mapping = self.client.indices.get_mapping(index=index)
        meta = mapping[index]["mappings"].get("_meta") or {}
        state: dict[str, Any] = meta.get(META_KEY) or {}
        return state

    def _put_meta(self, index: str, state: Mapping[str, Any]) -> None:
        with self._talking(f"recording the loaded snapshot in {index}"):
            self.client.indices.put_mapping(index=index, body={"_meta": {META_KEY: dict(state)}})

    def loaded_snapshot(self, tenant: str, table: str) -> int | None:
        """The snapshot the live index holds (``_meta.cdp.snapshot_id``), or None when never loaded."""
        live = self.live_index(tenant, table)
        if live is None:
            return None
        snapshot = self._meta(live).get("snapshot_id")
        return None if snapshot is None else int(snapshot)

    # -- loading ---------------------------------------------------------------------------------------------------

    def load(self, request: LoadRequest) -> LoadResult:
        """Bring the alias ``{tenant}_{table}`` to the request's snapshot."""
        changes = request.changes
        if changes is None:
            raise SearchLoadError(f"{request.table}: the search loader needs the framework's table changes")
        started = time.monotonic()
        live = self.live_index(request.tenant, request.table)
        if request.mode is LoadMode.FULL_REFRESH or request.previous_snapshot_id is None or live is None:
            result = self._load_full(request, changes, live)
        else:
            result = self._load_incremental(request, changes, live)
        seconds = time.monotonic() - started
        log_event(logger, "search_loaded", tenant=request.tenant, table=request.table, **_counts(request, result))
        return LoadResult(**{**result.__dict__, "seconds": seconds})

    def _mappings(self, request: LoadRequest, changes: TableChanges) -> dict[str, Any]:
        overrides = self.field_mappings.get(request.table)
        try:
            return index_mappings(changes.schema, changes.key, opensearch=self.opensearch, overrides=overrides)
        except ValueError as exc:
            raise SearchLoadError(f"{request.table}: {exc}") from exc

    def _state(self, request: LoadRequest, changes: TableChanges, row_count: int, **extra: Any) -> dict[str, Any]:
        return {
            "tenant": request.tenant,
            "table": request.table,
            "key": list(changes.key),
            "snapshot_id": request.snapshot_id,
            "mode": request.mode.value,
            "row_count": row_count,
            "loaded_at": datetime.now(UTC).isoformat(),
            **extra,
        }

    def _load_incremental(self, request: LoadRequest, changes: TableChanges, live: str) -> LoadResult:
        state = self._meta(live)
        held = state.get("snapshot_id")
        if held != request.previous_snapshot_id:
            raise SearchLoadError(
                f"{live} holds snapshot {held}, not {request.previous_snapshot_id} as planned: another load ran "
                "meanwhile; run the load again"
            )
        mappings = self._mappings(request, changes)
        with self._talking(f"adding new fields to {live}"):
            try:
                self.client.indices.put_mapping(index=live, body={"properties": mappings["properties"]})
            except Exception as exc:
                if _status(exc) == 400:
                    raise SearchLoadError(
                        f"{live}: the table's schema changed in a way the index cannot take ({exc}); "
                        "run 'cdp load run --full-refresh' to rebuild it"
                    ) from exc
                raise
        convert_maps = has_maps(changes.schema)

        def operations() -> Iterator[tuple[dict[str, Any], bytes | str | None]]:
            yield from self._index_operations(live, changes.key, changes.upserts(), convert_maps)
            # Asked only now, after upserts() was read to the end: the deleted keys reuse the keys it read.
            yield from self._delete_operations(live, changes.key, changes.deleted_keys())

        counts = self._bulk(request, operations())
        with self._talking(f"refreshing {live}"):
            self.client.indices.refresh(index=live)
            row_count = int(self.client.count(index=live)["count"])
        keep = {name: state[name] for name in ("previous_index", "previous_snapshot_id") if name in state}
        self._put_meta(live, self._state(request, changes, row_count, **keep))
        return LoadResult(
            table=request.table,
            snapshot_id=request.snapshot_id,
            inserted=counts.created,
            updated=counts.updated,
            deleted=counts.deleted,
        )

    def _load_full(self, request: LoadRequest, changes: TableChanges, live: str | None) -> LoadResult:
        alias = self.alias_name(request.tenant, request.table)
        new = f"{alias}_v{request.snapshot_id}"
        if new == live:  # A full refresh of the snapshot the live index holds: build beside it.
            new = f"{new}_{uuid.uuid4().hex[:8]}"
        mappings = self._mappings(request, changes)
        with self._talking(f"creating {new}"):
            self.client.indices.put_index_template(
                name=f"cdp_{alias}",
                body={
                    "index_patterns": [f"{alias}_v*"],
                    # acme_customers_v* also matches acme_customers_vip_v1, and Elasticsearch refuses overlapping
                    # templates of equal priority: the longer (more specific) alias wins, and equal lengths never
                    # overlap.
                    "priority": TEMPLATE_PRIORITY + len(alias),
                    "_meta": {"managed_by": "cdp-connectors", "table": request.table, "tenant": request.tenant},
                    "template": {
                        "settings": {"number_of_shards": self.number_of_shards},
                        "mappings": mappings,
                    },
                },
            )
            if self.client.indices.exists(index=new):
                self.client.indices.delete(index=new)  # Left by a load that stopped before its swap.
            # Loading settings: no replica to copy to and no refresh until the load ends (set back below).
            self.client.indices.create(
                index=new, body={"settings": {"number_of_replicas": 0, "refresh_interval": "-1"}}
            )
        counts = self._bulk(
            request, self._index_operations(new, changes.key, changes.all_rows(), has_maps(changes.schema))
        )
        with self._talking(f"finishing {new}"):
            self.client.indices.put_settings(
                index=new,
                body={"index": {"number_of_replicas": self.number_of_replicas, "refresh_interval": None}},
            )
            self.client.indices.refresh(index=new)
        expected = changes.row_count - counts.rejected
        self._verify(new, expected, counts.sample)
        previous_snapshot = self._meta(live).get("snapshot_id") if live else None
        self._put_meta(
            new,
            self._state(request, changes, expected, previous_index=live, previous_snapshot_id=previous_snapshot),
        )
        self._swap(alias, live, new)
        self._drop_old_versions(alias, keep={new, *([live] if live and self.keep_previous else [])})
        return LoadResult(table=request.table, snapshot_id=request.snapshot_id, inserted=counts.created)

    def _verify(self, index: str, expected: int, sample: Sequence[str]) -> None:
        """The new index holds ``expected`` documents and every sampled id; else the alias is not moved."""
        with self._talking(f"verifying {index}"):
            count = int(self.client.count(index=index)["count"])
            found = self.client.mget(index=index, body={"ids": list(sample)}, _source=False)["docs"] if sample else []
        if count != expected:
            raise SearchLoadError(
                f"{index}: {count} documents but {expected} expected (keys repeated in the snapshot share one _id); "
                "the alias still points at the previous index"
            )
        missing = [doc["_id"] for doc in found if not doc.get("found")]
        if missing:
            raise SearchLoadError(
                f"{index}: sampled ids not found ({', '.join(missing[:5])}); the alias still points at the previous "
                "index"
            )

    def _swap(self, alias: str, live: str | None, new: str) -> None:
        """ONE ``_aliases`` call: the alias leaves the live index and lands on the new one, atomically."""
        actions: list[dict[str, Any]] = []
        if live is not None:
            # must_exist: if another load moved the alias meanwhile, the whole call fails and nothing moves.
            actions.append({"remove": {"index": live, "alias": alias, "must_exist": True}})
        actions.append({"add": {"index": new, "alias": alias}})
        with self._talking(f"moving alias {alias} to {new}"):
            self.client.indices.update_aliases(body={"actions": actions})
        log_event(logger, "search_alias_swapped", alias=alias, index=new, previous=live)

    def _drop_old_versions(self, alias: str, keep: set[str]) -> None:
        """Delete the table's versioned indexes other than ``keep`` (the one before the previous, leftovers)."""
        pattern = self._versions(alias)
        with self._talking(f"listing the indexes of {alias}"):
            names = list(self.client.indices.get(index=f"{alias}_v*", expand_wildcards="open,closed"))
        for name in sorted(names):
            if name not in keep and pattern.fullmatch(name):
                with self._talking(f"deleting {name}"):
                    self.client.indices.delete(index=name)
                log_event(logger, "search_index_deleted", index=name)

    def rollback(self, tenant: str, table: str) -> int | None:
        """Move the alias back to the index the last full refresh replaced; the snapshot it holds."""
        alias = self.alias_name(tenant, table)
        live = self.live_index(tenant, table)
        if live is None:
            raise SearchLoadError(f"{alias} was never loaded; there is nothing to roll back")
        state = self._meta(live)
        previous = state.get("previous_index")
        with self._talking(f"looking for {previous}"):
            exists = bool(previous) and bool(self.client.indices.exists(index=previous))
        if not exists:
            raise SearchLoadError(f"{alias} has no previous index to roll back to (kept only until the next swap)")
        assert isinstance(previous, str)
        previous_state = self._meta(previous)
        # The live index becomes the previous one: a second rollback undoes the first.
        swapped = {"previous_index": live, "previous_snapshot_id": state["snapshot_id"]}
        self._put_meta(previous, {**previous_state, **swapped})
        self._swap(alias, live, previous)
        snapshot = previous_state.get("snapshot_id")
        return None if snapshot is None else int(snapshot)

    # -- bulk ------------------------------------------------------------------------------------------------------

    def _index_operations(
        self, index: str, key: Sequence[str], batches: Iterable[Any], convert_maps: bool
    ) -> Iterator[tuple[dict[str, Any], bytes | str | None]]:
        """Index actions with their documents already serialised (the clients pass them through as they are)."""
        as_text = self.opensearch  # opensearch-py's bulk chunker takes text, elasticsearch-py's bytes.
        for batch in batches:
            for row in batch.to_pylist():
                source = document_bytes(row, convert_maps=convert_maps)
                yield {"index": {"_index": index, "_id": document_id(row, key)}}, source.decode() if as_text else source

    @staticmethod
    def _delete_operations(
        index: str, key: Sequence[str], batches: Iterable[Any]
    ) -> Iterator[tuple[dict[str, Any], bytes | str | None]]:
        for batch in batches:
            for row in batch.to_pylist():
                yield {"delete": {"_index": index, "_id": document_id(row, key)}}, None

    def _bulk(self, request: LoadRequest, operations: Iterable[tuple[dict[str, Any], bytes | str | None]]) -> _Counts:
        """Send ``operations`` by ``streaming_bulk``; rejected documents to the DLQ, what was done counted."""
        counts = _Counts()
        pending: dict[str, bytes | str] = {}  # Sources sent and not yet answered, by _id: the DLQ needs the document.
        letters: list[DeadLetter] = []
        stride = max(1, (request.changes.row_count if request.changes else 0) // max(1, self.verify_sample))
        position = 0

        def remembered() -> Iterator[tuple[dict[str, Any], bytes | str | None]]:
            for action, source in operations:
                if source is not None:
                    pending[next(iter(action.values()))["_id"]] = source
                yield action, source

        with self._talking("bulk indexing"):
            for _, item in self._streaming_bulk(
                self.client,
                remembered(),
                expand_action_callback=lambda operation: operation,
                chunk_size=self.chunk_size,
                max_chunk_bytes=self.max_chunk_bytes,
                max_retries=self.max_retries,
                initial_backoff=self.initial_backoff,
                max_backoff=self.max_backoff,
                raise_on_error=False,
                raise_on_exception=True,
            ):
                operation, result = next(iter(item.items()))
                doc_id = str(result.get("_id"))
                source = pending.pop(doc_id, None)
                status = int(result.get("status", 500))
                if operation == "delete":
                    if status == 404:
                        continue  # Already gone: a delete repeated after a crash, or never loaded.
                    if 200 <= status < 300:
                        counts.deleted += 1
                        continue
                elif 200 <= status < 300:
                    if result.get("result") == "created":
                        counts.created += 1
                    else:
                        counts.updated += 1
                    if position % stride == 0 and len(counts.sample) < self.verify_sample:
                        counts.sample.append(doc_id)
                    position += 1
                    continue
                if status == 429 or status >= 500:
                    raise SearchLoadError(
                        f"{result.get('_index')}: the cluster refused document {doc_id} with {status} after "
                        f"{self.max_retries} retries ({_reason(result)}); run the load again later"
                    )
                counts.rejected += 1
                letters.append(self._letter(request, operation, result, source))
                if len(letters) >= DLQ_FLUSH:
                    self._write_dead_letters(request, letters)
                    letters = []
        self._write_dead_letters(request, letters)
        return counts

    def _letter(
        self, request: LoadRequest, operation: str, result: Mapping[str, Any], source: bytes | str | None
    ) -> DeadLetter:
        error = result.get("error") or {}
        reason = _reason(result)
        return DeadLetter(
            error_type=ErrorType.LOAD_REJECTED,
            error_message=f"{self.flavour} rejected document {result.get('_id')} of {request.table}: {reason}",
            stream=request.table,
            record=None if source is None else orjson.loads(source),
            errors=[FieldError("$", reason)],
            context={
                "destination": self.flavour,
                "index": result.get("_index"),
                "id": result.get("_id"),
                "operation": operation,
                "status": result.get("status"),
                "error": error,
                "snapshot_id": request.snapshot_id,
                "table": request.table,
            },
        )

    def _write_dead_letters(self, request: LoadRequest, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        from plugins.core.storage import ObjectStore
        from plugins.core.zones import Zone, resolve_zone_url

        store = ObjectStore(resolve_zone_url(Zone.DLQ, self.dlq_url), setting="dlq_url")
        DeadLetterQueue(store, tenant=request.tenant, provider=self.flavour).write(letters)
        log_event(
            logger,
            "search_documents_rejected",
            level=logging.WARNING,
            tenant=request.tenant,
            table=request.table,
            count=len(letters),
        )


def _tls(ca_certs: str | None) -> dict[str, Any]:
    """elasticsearch-py takes ``ca_certs`` only when given (None is not its default)."""
    return {"ca_certs": ca_certs} if ca_certs else {}


def _reason(result: Mapping[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error or result.get("result") or "no reason given")


def _counts(request: LoadRequest, result: LoadResult) -> dict[str, Any]:
    return {
        "mode": request.mode.value,
        "snapshot_id": result.snapshot_id,
        "inserted": result.inserted,
        "updated": result.updated,
        "deleted": result.deleted,
    }


__all__ = ["SearchLoadError", "SearchLoader"]
