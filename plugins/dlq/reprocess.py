"""Reprocessing DLQ batches: validate the records again (optionally after a mapping) and move the ones that pass.

For each source batch, under its lease (``plugins/core/leases.py``: ``_lease/reprocess/`` in the DLQ store, one live
owner at a time; a batch another live run holds is skipped with a note naming that run):

1. Read its entries, map each record (``--map``), validate it against the subject's latest schema (or
   ``--schema-version``) and check the stream's key properties recorded with the entry. Passing records become raw
   rows (normal layout, ``_cdp_schema_version`` and ``_cdp_reprocessed_from = "<source key>#L<line>"``); failing ones
   become new dead letters (``retry_count + 1``, the new errors, the original record unchanged). A batch holding
   parse errors, or records the target could not represent exactly (``record_text``/``record_base64``), is skipped
   unless a ``--map`` turns them into records: nothing is landed that the source did not send.
2. Write a journal ``_journal/reprocess/<sha256 of the source key>.json`` in the DLQ store naming every output key.
   Output keys are derived from the source key and the attempt's time, so they are fixed before anything is written.
3. Write the raw batch, then the DLQ batch (each one atomic object).
4. Retire the source: move it to ``_retired/<source key>`` (kept for forensics until ``purge``).
5. Delete the journal, release the lease.

Before each write the run renews its lease and checks nobody took it over. A crash anywhere leaves either no journal
(nothing happened, or everything did) or a journal with a lease whose owner is gone. A reprocess run finishes only
journals whose lease it can take (the owner released it, let it expire, or ran on this host and its pid is dead):
when all outputs exist it rolls forward (retire the source, delete the journal); otherwise it rolls back (delete the
outputs that exist, delete the journal) and the source, still in place, is processed again. A live run's journal is
never touched, and a batch that is an output of an unfinished attempt is left alone until that attempt is done. So no
record is lost, and none is in two places once a run has finished; a reader that looked at the raw zone during a
rolled-back attempt can drop the repeat by ``_cdp_reprocessed_from``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType, FieldError, new_run_id
from plugins.core.errors import CdpError, ObjectNotFoundError
from plugins.core.layout import dlq_batch_key, parse_batch_key, raw_batch_key
from plugins.core.leases import DEFAULT_LEASE_TTL, Lease, LeaseBusy, LeaseLostError, LeaseManager
from plugins.core.raw_zone import METADATA_COLUMNS, gzip_bytes, read_batch
from plugins.core.serialization import dumps, loads, ndjson
from plugins.core.storage import ObjectStore
from plugins.core.validation import RecordValidator
from plugins.dlq.audit import AuditEntry, AuditLog
from plugins.dlq.ops import (
    JOURNAL_PREFIX,
    REPROCESS_LEASE_PREFIX,
    REQUEST_ERROR_TYPES,
    RETIRED_PREFIX,
    TRANSFORM_ERROR_TYPES,
    BatchNotFoundError,
    BatchRunReport,
    generic_message,
    get_batch,
)
from plugins.dlq.record_mapping import MappingExitError, RecordMapping, RecordMappingError

if TYPE_CHECKING:
    from schema_registry import SchemaRegistry

REPROCESSED_FROM = "_cdp_reprocessed_from"
REPROCESS_JOURNAL_PREFIX = f"{JOURNAL_PREFIX}/reprocess"
_STRIPPED = frozenset({*METADATA_COLUMNS, REPROCESSED_FROM})
# Where the target keeps a record JSON cannot represent exactly (its ``record`` is then null): the original line as
# text, or as base64 when it is not valid UTF-8.
ORIGINAL_FIELDS = ("record_text", "record_base64")
# A bare NaN or Infinity in a message is the value itself; a quoted "NaN" is a string the source sent, representable.
_UNREPRESENTABLE_RE = re.compile(r"not representable|cannot be represented|(?<![\"'\w])-?(?:NaN|Infinity)\b(?![\"'])")
_CONTRADICTORY_NULL_RE = re.compile(r'^null is not of types? .*"null"')


class ReprocessError(CdpError):
    """A batch cannot be reprocessed as asked (wrong error type, no schema, a broken journal)."""


class SchemaNotRegisteredError(ReprocessError):
    """The subject has no schema (or not the version asked for) to validate against."""


@dataclass
class BatchOutcome:
    """What happened (or, in a dry run, would happen) to one source batch."""

    source: str
    status: str  # reprocessed | dry_run | recovered | rolled_back | already_done | skipped | failed
    records: int = 0
    passed: int = 0
    failed: int = 0
    schema_versions: dict[str, int] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    new_errors: dict[str, int] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "records": self.records,
            "passed": self.passed,
            "failed": self.failed,
            "schema_versions": self.schema_versions,
            "outputs": self.outputs,
            "new_errors": self.new_errors,
            "message": self.message,
        }


@dataclass
class ReprocessReport(BatchRunReport[BatchOutcome]):
    """Every batch's outcome and the audit entry written for the run (none for a dry run or no change)."""

    aborted: str | None = None  # Why the run stopped before its last batch (a --map called sys.exit).

    @property
    def ok(self) -> bool:
        return self.aborted is None and super().ok

    def totals(self) -> dict[str, int]:
        counted = [o for o in self.outcomes if o.status in ("reprocessed", "dry_run", "recovered")]
        return {
            "batches": len(counted),
            "records": sum(o.records for o in counted),
            "passed": sum(o.passed for o in counted),
            "failed": sum(o.failed for o in counted),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "totals": self.totals(), "aborted": self.aborted}


@dataclass
class _Plan:
    """The computed result of one source batch, before anything is written."""

    source: str
    tenant: str
    provider: str
    records: int
    raw_rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # Each new dead letter with the original text or bytes its entry kept (record_text / record_base64), unchanged.
    dlq_letters: dict[tuple[str, str], list[tuple[DeadLetter, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    versions: dict[str, int] = field(default_factory=dict)
    new_errors: Counter[str] = field(default_factory=Counter)
    needs_map: Counter[str] = field(default_factory=Counter)

    def note(self) -> str:
        """Why the batch is left as it is (empty when it is not)."""
        if not self.needs_map:
            return ""
        reasons = "; ".join(f"{count} {reason}" for reason, count in self.needs_map.items())
        return f"skipped: {reasons}; see 'Parse errors and values JSON cannot hold' in docs/support-runbook.md"

    @property
    def passed(self) -> int:
        return sum(len(rows) for rows in self.raw_rows.values())

    @property
    def failed(self) -> int:
        return sum(len(letters) for letters in self.dlq_letters.values())


def unrepresentable(entry: dict[str, Any]) -> bool:
    """Whether the entry's ``record`` is not what the source sent: the target kept the original text (or bytes)
    instead, or (entries written before it did) its error says a value could not be represented, such as a NaN
    stored as ``null`` and then rejected with a message that contradicts the schema ("null is not of type null")."""
    if entry.get("record") is None and any(entry.get(name) is not None for name in ORIGINAL_FIELDS):
        return True
    messages = [str(entry.get("error_message") or "")]
    messages += [str(e.get("message", "")) for e in entry.get("errors") or [] if isinstance(e, dict)]
    return any(_UNREPRESENTABLE_RE.search(m) or _CONTRADICTORY_NULL_RE.search(m) for m in messages)


def original_input(entry: dict[str, Any]) -> Any:
    """What a ``--map`` receives: the original text (bytes when not UTF-8) if the target kept it, else ``record``."""
    if entry.get("record_text") is not None:
        return entry["record_text"]
    if entry.get("record_base64") is not None:
        return base64.b64decode(entry["record_base64"])
    return entry.get("record")


def _key_errors(body: dict[str, Any], entry: dict[str, Any]) -> list[FieldError]:
    """The target's key check: every key property the stream declared (recorded with the entry) is present."""
    declared = (entry.get("context") or {}).get("key_properties") or []
    missing = [k for k in declared if isinstance(k, str) and k not in body]
    if not missing:
        return []
    return [
        FieldError(
            "$",
            f"the record has no key properties {missing} (the stream's key_properties are {list(declared)}); "
            "a row without its key cannot be landed",
        )
    ]


def journal_key(source: str) -> str:
    """Where the journal of ``source``'s reprocessing lives while it is in flight."""
    return f"{REPROCESS_JOURNAL_PREFIX}/{hashlib.sha256(source.encode()).hexdigest()[:32]}.json"


def _unique(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _summary(errors: list[FieldError]) -> str:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"reprocess: {first.path}: {first.message}{more}"


# Reprocesses a batch whose entries are not raw records by other means (``activation_failed``: members a destination
# did not take are sent again through the delivery engine). Called as ``handler(source, entries, dry_run)``; it writes
# whatever fails again to the DLQ itself and reports the batch's outcome (``reprocessed``, ``dry_run`` or ``failed``);
# the reprocessor retires the source after a ``reprocessed`` outcome and audits the run like any other.
BatchHandler = Callable[[str, list[dict[str, Any]], bool], "BatchOutcome"]


class Reprocessor:
    """Reprocesses DLQ batches into the raw zone; see the module docstring for the crash-safety protocol.

    ``handlers`` (error type -> :data:`BatchHandler`) reprocess the error types that are not raw records."""

    def __init__(
        self,
        dlq_store: ObjectStore,
        raw_store: ObjectStore,
        registry: SchemaRegistry,
        *,
        actor: str,
        mapping: RecordMapping | None = None,
        schema_version: int | None = None,
        run_id: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        handlers: Mapping[str, BatchHandler] | None = None,
    ) -> None:
        self.dlq_store = dlq_store
        self.handlers = dict(handlers or {})
        self.raw_store = raw_store
        self.registry = registry
        self.actor = actor
        self.mapping = mapping
        self.schema_version = schema_version
        self.run_id = run_id or new_run_id()
        self.clock = clock
        self.leases = LeaseManager(dlq_store, REPROCESS_LEASE_PREFIX, run_id=self.run_id, ttl=lease_ttl, clock=clock)
        self._schemas: dict[tuple[str, str, str], tuple[int, RecordValidator]] = {}

    # -- validation ---------------------------------------------------------------------------------------------

    def _validator(self, tenant: str, provider: str, stream: str) -> tuple[int, RecordValidator]:
        from schema_registry import SubjectNotFoundError, subject_name

        cache_key = (tenant, provider, stream)
        if cache_key in self._schemas:
            return self._schemas[cache_key]
        subject = subject_name(tenant, provider, stream)
        if self.schema_version is not None:
            try:
                version = self.registry.get(subject, self.schema_version)
            except SubjectNotFoundError as exc:
                raise SchemaNotRegisteredError(str(exc)) from None
        else:
            latest = self.registry.latest(subject)
            if latest is None:
                raise SchemaNotRegisteredError(
                    f"subject '{subject}' has no schema; register the fixed one with "
                    f"'cdp schema register {subject} FILE' and run reprocess again"
                )
            version = latest
        result = (version.version, RecordValidator.for_schema(version.schema))
        self._schemas[cache_key] = result
        return result

    def _needs_map(self, entry: dict[str, Any], stream: str) -> str | None:
        """Why ``entry`` may only be landed through a ``--map`` that applies to its stream (None if it may not)."""
        if self.mapping is not None and self.mapping.applies_to(stream):
            return None
        if entry.get("error_type") == ErrorType.PARSE_ERROR:
            return "parse errors (not records: they need a --map that turns them into records)"
        if unrepresentable(entry):
            return "values the source sent that JSON cannot represent exactly (they need a --map)"
        return None

    def plan(self, source: str, attempt_at: datetime) -> _Plan:
        """Validate every entry of ``source`` again; nothing is written."""
        key = parse_batch_key(source)
        if key.error_type in REQUEST_ERROR_TYPES:
            raise ReprocessError(
                f"{source} holds {key.error_type} entries (failed requests, not records); use 'cdp dlq resubmit'"
            )
        if key.error_type == ErrorType.LOAD_REJECTED:
            raise ReprocessError(
                f"{source} holds {key.error_type} rows (documents a serving store refused, not raw records); fix the "
                "data or the index mapping and run 'cdp load run --full-refresh'"
            )
        if key.error_type == ErrorType.ACTIVATION_FAILED:
            raise ReprocessError(
                f"{source} holds {key.error_type} members (sends a destination did not take); give --postgres-url "
                "(or CDP_POSTGRES_URL) so reprocess can send them again"
            )
        if key.error_type in TRANSFORM_ERROR_TYPES:
            raise ReprocessError(
                f"{source} holds {key.error_type} rows (of a processed table, not raw records); fix the source data "
                "or the table's quality rule and run the transform again"
            )
        entries = read_batch(self.dlq_store, source)
        plan = _Plan(source=source, tenant=key.tenant, provider=key.provider, records=len(entries))
        base_sequence = int(attempt_at.timestamp() * 1_000_000)
        for entry in entries:
            reason = self._needs_map(entry, str(entry.get("stream") or key.stream))
            if reason is not None:
                plan.needs_map[reason] += 1
        if plan.needs_map:  # Leave the whole batch as it is: nothing of it moves until support writes the map.
            return plan
        for line, entry in enumerate(entries, start=1):
            stream = str(entry.get("stream") or key.stream)
            version, validator = self._validator(key.tenant, key.provider, stream)
            plan.versions[stream] = version
            origin = f"{source}#L{line}"
            record = entry.get("record")
            originals = {name: entry[name] for name in ORIGINAL_FIELDS if entry.get(name) is not None}
            errors: list[FieldError]
            mapped: Any = record
            body: dict[str, Any] = {}
            try:
                if self.mapping is not None:
                    mapped = self.mapping.apply(original_input(entry), stream)
            except RecordMappingError as exc:
                errors = [FieldError(exc.path, exc.message)]
            else:
                if isinstance(mapped, dict):
                    body = {k: v for k, v in mapped.items() if k not in _STRIPPED}
                    errors = validator.errors(body) or _key_errors(body, entry)
                else:
                    errors = [FieldError("$", f"the record is a {type(mapped).__name__}, not a JSON object")]
            if not errors:
                row = dict(body)
                row["_sdc_extracted_at"] = mapped.get("_sdc_extracted_at")
                row["_sdc_received_at"] = mapped.get("_sdc_received_at") or entry.get("failed_at")
                row["_sdc_batched_at"] = attempt_at.isoformat()
                row["_sdc_sequence"] = mapped.get("_sdc_sequence") or base_sequence + line
                row["_cdp_schema_version"] = version
                row[REPROCESSED_FROM] = origin
                plan.raw_rows[stream].append(row)
                continue
            for error in errors:  # Grouped like 'cdp dlq show' groups them, without the failing values.
                plan.new_errors[f"{error.path}: {generic_message(error.message, mapped, error.path)}"] += 1
            error_type = ErrorType.SCHEMA_VALIDATION if isinstance(mapped, dict) else ErrorType(entry["error_type"])
            context = dict(entry.get("context") or {})
            context["reprocessed_from"] = origin
            context["previous_error_type"] = entry.get("error_type")
            if self.mapping is not None:
                context["mapping"] = self.mapping.describe()
            letter = DeadLetter(
                error_type=error_type,
                error_message=_summary(errors),
                stream=stream,
                record=record,
                errors=errors,
                schema_version=version,
                retry_count=int(entry.get("retry_count") or 0) + 1,
                context=context,
                failed_at=attempt_at,
                # A line that could not be represented as JSON stays only here: carry it to the new entry.
                record_text=entry.get("record_text"),
                record_base64=entry.get("record_base64"),
            )
            plan.dlq_letters[(error_type.value, stream)].append((letter, originals))
        if plan.passed + plan.failed != plan.records:  # Conservation is the whole point: refuse to go on without it.
            raise ReprocessError(f"{source}: {plan.records} records in but {plan.passed + plan.failed} out")
        return plan

    # -- writing ------------------------------------------------------------------------------------------------

    def _outputs(self, plan: _Plan, attempt_at: datetime) -> list[tuple[str, str, bytes, int]]:
        """``(zone, key, payload, records)`` of every object the plan writes, keys fixed by source and attempt."""
        stamp = attempt_at.isoformat()
        outputs = []
        for stream, rows in sorted(plan.raw_rows.items()):
            key = raw_batch_key(
                plan.tenant, plan.provider, stream, attempt_at, _unique(plan.source, stamp, "raw", stream)
            )
            outputs.append(("raw", key, gzip_bytes(ndjson(rows)), len(rows)))
        queue = DeadLetterQueue(self.dlq_store, tenant=plan.tenant, provider=plan.provider, run_id=self.run_id)
        for (error_type, stream), letters in sorted(plan.dlq_letters.items()):
            unique = _unique(plan.source, stamp, "dlq", error_type, stream)
            key = dlq_batch_key(plan.tenant, plan.provider, error_type, stream, attempt_at, unique)
            payload = gzip_bytes(ndjson({**queue.entry(letter), **originals} for letter, originals in letters))
            outputs.append(("dlq", key, payload, len(letters)))
        return outputs

    def _store(self, zone: str) -> ObjectStore:
        return self.raw_store if zone == "raw" else self.dlq_store

    def _retire(self, source: str) -> None:
        if self.dlq_store.exists(source):
            self.dlq_store.move(source, f"{RETIRED_PREFIX}/{source}")

    def _execute(self, plan: _Plan, attempt_at: datetime, lease: Lease) -> BatchOutcome:
        outputs = self._outputs(plan, attempt_at)
        described = [{"zone": zone, "key": key, "records": count} for zone, key, _payload, count in outputs]
        journal = {
            "source": plan.source,
            "attempt_at": attempt_at.isoformat(),
            "run_id": self.run_id,
            "actor": self.actor,
            "records": plan.records,
            "passed": plan.passed,
            "failed": plan.failed,
            "schema_versions": plan.versions,
            "mapping": self.mapping.describe() if self.mapping else None,
            "outputs": described,
        }
        # Each step first renews the lease and checks nobody took it over: a run that stalled past its TTL stops here,
        # leaving its journal to the new holder.
        lease.ensure_held()
        self.dlq_store.write_bytes(journal_key(plan.source), dumps(journal))
        for zone, key, payload, _count in outputs:  # Raw first, then the DLQ: the order _outputs returns.
            lease.ensure_held()
            self._store(zone).write_bytes(key, payload)
        lease.ensure_held()
        self._retire(plan.source)
        self.dlq_store.delete(journal_key(plan.source))
        return BatchOutcome(
            source=plan.source,
            status="reprocessed",
            records=plan.records,
            passed=plan.passed,
            failed=plan.failed,
            schema_versions=plan.versions,
            outputs=described,
            new_errors=dict(plan.new_errors.most_common()),
        )

    # -- recovery -----------------------------------------------------------------------------------------------

    def pending_journals(self) -> list[str]:
        """Keys of the journals of reprocessing attempts that did not finish."""
        return [info.key for info in self.dlq_store.list(REPROCESS_JOURNAL_PREFIX)]

    def recover(self, key: str) -> BatchOutcome:
        """Finish one interrupted attempt: roll forward if every output is durable, else roll back."""
        journal = loads(self.dlq_store.read_bytes(key))
        source = str(journal["source"])
        outputs = list(journal["outputs"])
        present = [o for o in outputs if self._store(o["zone"]).exists(o["key"])]
        if len(present) == len(outputs):
            self._retire(source)
            self.dlq_store.delete(key)
            return BatchOutcome(
                source=source,
                status="recovered",
                records=int(journal["records"]),
                passed=int(journal["passed"]),
                failed=int(journal["failed"]),
                schema_versions=dict(journal.get("schema_versions") or {}),
                outputs=outputs,
                message="an interrupted attempt had written every output; its source is now retired",
            )
        if not self.dlq_store.exists(source):
            raise ReprocessError(
                f"journal {self.dlq_store.url_for(key)}: source {source} is gone but outputs are missing; "
                "check _retired/ before deleting the journal"
            )
        for output in present:
            self._store(output["zone"]).delete(output["key"])
        self.dlq_store.delete(key)
        return BatchOutcome(
            source=source,
            status="rolled_back",
            records=int(journal["records"]),
            outputs=present,
            message=(
                f"an interrupted attempt was undone ({len(present)} of {len(outputs)} outputs removed); "
                "the source batch is unchanged in the DLQ"
            ),
        )

    # -- the operation ------------------------------------------------------------------------------------------

    def run(
        self,
        sources: Iterable[str],
        *,
        dry_run: bool = False,
        parameters: dict[str, Any] | None = None,
        on_batch: Callable[[str], None] | None = None,
    ) -> ReprocessReport:
        """Reprocess ``sources`` (DLQ keys), after finishing any interrupted attempt whose run is gone; audited unless
        a dry run. A batch another live run holds is skipped with a note."""
        outcomes: list[BatchOutcome] = []
        if not dry_run:
            outcomes.extend(self._recover_abandoned())
        # Skip what recovery finished, and the DLQ batches it just completed (a filter may have listed them).
        done = {o.source for o in outcomes if o.status == "recovered"}
        done |= {out["key"] for o in outcomes if o.status == "recovered" for out in o.outputs if out["zone"] == "dlq"}
        aborted = None
        try:
            for source in dict.fromkeys(sources):
                if on_batch is not None:
                    on_batch(source)
                if source in done:
                    continue
                outcomes.extend(self._run_one(source, dry_run=dry_run))
        except MappingExitError as exc:  # Nothing of the batch in hand was written; what is done stays, audited.
            aborted = str(exc)
        report = ReprocessReport(outcomes=outcomes, dry_run=dry_run, aborted=aborted)
        changed = [o for o in outcomes if o.status in ("reprocessed", "recovered", "rolled_back")]
        if not dry_run and (changed or aborted):
            report.audit_key = self._audit(report, parameters or {})
        return report

    def _recover_abandoned(self) -> list[BatchOutcome]:
        """Finish the journals whose run is gone; a live run's journal is left to it."""
        outcomes = []
        for key in self.pending_journals():
            try:
                source = str(loads(self.dlq_store.read_bytes(key))["source"])
            except ObjectNotFoundError:
                continue  # Its run finished between the listing and the read.
            lease = self.leases.acquire(source)
            if isinstance(lease, LeaseBusy):
                continue  # Its run is alive; the batch is reported as skipped if this run was asked for it.
            try:
                if self.dlq_store.exists(key):
                    outcomes.append(self.recover(key))
            except ReprocessError as exc:
                outcomes.append(BatchOutcome(source, "failed", message=str(exc)))
            finally:
                lease.release()
        return outcomes

    def _in_flight_output(self, source: str) -> str | None:
        """The source of an unfinished attempt that wrote ``source`` as one of its outputs, if any.

        Such a batch may still be rolled back with its attempt, so reprocessing it now could land its records twice.
        An output is written after its journal and the journal is deleted only once the attempt is complete, so a
        batch that was listed and has no journal naming it is safe."""
        for key in self.pending_journals():
            try:
                journal = loads(self.dlq_store.read_bytes(key))
            except ObjectNotFoundError:
                continue
            if any(o["zone"] == "dlq" and o["key"] == source for o in journal.get("outputs") or []):
                return str(journal["source"])
        return None

    def _run_one(self, source: str, *, dry_run: bool) -> list[BatchOutcome]:
        """One source batch under its lease: recover its own interrupted attempt if any, then reprocess it."""
        now = self.clock()
        if dry_run:
            return [self._attempt(source, None, dry_run=True)]
        lease = self.leases.acquire(source)
        if isinstance(lease, LeaseBusy):
            note = f"skipped: {lease.describe(now)}; run reprocess again once it has finished"
            return [BatchOutcome(source, "skipped", message=note)]
        outcomes: list[BatchOutcome] = []
        try:
            parent = self._in_flight_output(source)
            if parent is not None:
                note = f"skipped: written by an unfinished reprocess of {parent}; run reprocess again once it is done"
                return [BatchOutcome(source, "skipped", message=note)]
            if self.dlq_store.exists(journal_key(source)):  # Its run died after this run's recovery pass.
                recovered = self.recover(journal_key(source))
                outcomes.append(recovered)
                if recovered.status == "recovered":
                    return outcomes
            outcomes.append(self._attempt(source, lease, dry_run=False))
        except (ReprocessError, LeaseLostError) as exc:
            outcomes.append(BatchOutcome(source, "failed", message=str(exc)))
        finally:
            lease.release()
        return outcomes

    def _attempt(self, source: str, lease: Lease | None, *, dry_run: bool) -> BatchOutcome:
        try:
            if not self.dlq_store.exists(source):
                if self.dlq_store.exists(f"{RETIRED_PREFIX}/{source}"):
                    return BatchOutcome(source, "already_done", message="already retired")
                get_batch(self.dlq_store, source)  # Raises the standard "no such batch" error.
            handler = self.handlers.get(parse_batch_key(source).error_type or "")
            if handler is not None:
                return self._handled(source, handler, lease, dry_run=dry_run)
            attempt_at = self.clock()
            plan = self.plan(source, attempt_at)
            if plan.needs_map:
                return BatchOutcome(source, "skipped", records=plan.records, message=plan.note())
            if dry_run or lease is None:
                return BatchOutcome(
                    source=source,
                    status="dry_run",
                    records=plan.records,
                    passed=plan.passed,
                    failed=plan.failed,
                    schema_versions=plan.versions,
                    new_errors=dict(plan.new_errors.most_common()),
                )
            return self._execute(plan, attempt_at, lease)
        except (ReprocessError, BatchNotFoundError) as exc:
            return BatchOutcome(source, "failed", message=str(exc))
        except (zlib.error, orjson.JSONDecodeError) as exc:
            message = f"{source} is not gzip NDJSON ({exc}); inspect it by hand, it was left as it is"
            return BatchOutcome(source, "failed", message=message)

    def _handled(self, source: str, handler: BatchHandler, lease: Lease | None, *, dry_run: bool) -> BatchOutcome:
        """A batch an error type's handler reprocesses; the source is retired once it says ``reprocessed``."""
        outcome = handler(source, read_batch(self.dlq_store, source), dry_run or lease is None)
        if outcome.status == "reprocessed" and lease is not None:
            lease.ensure_held()
            self._retire(source)
        return outcome

    def _audit(self, report: ReprocessReport, parameters: dict[str, Any]) -> str:
        moved = [o for o in report.outcomes if o.status in ("reprocessed", "recovered")]
        entry = AuditEntry(
            action="reprocess",
            actor=self.actor,
            parameters={
                **parameters,
                "schema_version": self.schema_version,
                "mapping": self.mapping.describe() if self.mapping else None,
                "run_id": self.run_id,
            },
            batches=[o.source for o in moved],
            counts_before={"dlq_batches": len(moved), "dlq_records": sum(o.records for o in moved)},
            counts_after={
                "raw_records": sum(o.passed for o in moved),
                "dlq_records": sum(o.failed for o in moved),
                "retired_batches": len(moved),
            },
            outcome="aborted" if report.aborted else "ok" if report.ok else "partial",
            details={"batches": [o.as_dict() for o in report.outcomes], "aborted": report.aborted},
        )
        return AuditLog(self.dlq_store).record(entry)
