"""Reprocessing DLQ batches: validate the records again (optionally after a mapping) and move the ones that pass.

For each source batch:

1. Read its entries, map each record (``--map``), validate it against the subject's latest schema (or
   ``--schema-version``). Passing records become raw rows (normal layout, ``_cdp_schema_version`` and
   ``_cdp_reprocessed_from = "<source key>#L<line>"``); failing ones become new dead letters (``retry_count + 1``, the
   new errors, the original record unchanged).
2. Write a journal ``_journal/reprocess/<sha256 of the source key>.json`` in the DLQ store naming every output key.
   Output keys are derived from the source key and the attempt's time, so they are fixed before anything is written.
3. Write the raw batch, then the DLQ batch (each one atomic object).
4. Retire the source: move it to ``_retired/<source key>`` (kept for forensics until ``purge``).
5. Delete the journal.

A crash anywhere leaves either no journal (nothing happened, or everything did) or a journal. The next reprocess run
first finishes every journal it finds: when all its outputs exist it rolls forward (retire the source, delete the
journal); otherwise it rolls back (delete the outputs that exist, delete the journal) and the source, still in place,
is processed again. So no record is lost, and none is in two places once a run has finished; a reader that looked at
the raw zone during a rolled-back attempt can drop the repeat by ``_cdp_reprocessed_from``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from plugins.audit import AuditEntry, AuditLog
from plugins.dlq import DeadLetter, DeadLetterQueue, ErrorType, FieldError, new_run_id
from plugins.dlq_ops import (
    JOURNAL_PREFIX,
    REQUEST_ERROR_TYPES,
    RETIRED_PREFIX,
    BatchNotFoundError,
    BatchRunReport,
    generic_message,
    get_batch,
)
from plugins.errors import CdpError
from plugins.layout import dlq_batch_key, parse_batch_key, raw_batch_key
from plugins.raw_zone import METADATA_COLUMNS, gzip_bytes, read_batch
from plugins.record_mapping import RecordMapping, RecordMappingError
from plugins.serialization import dumps, loads, ndjson
from plugins.storage import ObjectStore
from plugins.validation import RecordValidator

if TYPE_CHECKING:
    from schema_registry import SchemaRegistry

REPROCESSED_FROM = "_cdp_reprocessed_from"
REPROCESS_JOURNAL_PREFIX = f"{JOURNAL_PREFIX}/reprocess"
_STRIPPED = frozenset({*METADATA_COLUMNS, REPROCESSED_FROM})


class ReprocessError(CdpError):
    """A batch cannot be reprocessed as asked (wrong error type, no schema, a broken journal)."""


class SchemaNotRegisteredError(ReprocessError):
    """The subject has no schema (or not the version asked for) to validate against."""


@dataclass
class BatchOutcome:
    """What happened (or, in a dry run, would happen) to one source batch."""

    source: str
    status: str  # reprocessed | dry_run | recovered | rolled_back | already_done | failed
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

    def totals(self) -> dict[str, int]:
        counted = [o for o in self.outcomes if o.status in ("reprocessed", "dry_run", "recovered")]
        return {
            "batches": len(counted),
            "records": sum(o.records for o in counted),
            "passed": sum(o.passed for o in counted),
            "failed": sum(o.failed for o in counted),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "totals": self.totals()}


@dataclass
class _Plan:
    """The computed result of one source batch, before anything is written."""

    source: str
    tenant: str
    provider: str
    records: int
    raw_rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dlq_letters: dict[tuple[str, str], list[DeadLetter]] = field(default_factory=lambda: defaultdict(list))
    versions: dict[str, int] = field(default_factory=dict)
    new_errors: Counter[str] = field(default_factory=Counter)

    @property
    def passed(self) -> int:
        return sum(len(rows) for rows in self.raw_rows.values())

    @property
    def failed(self) -> int:
        return sum(len(letters) for letters in self.dlq_letters.values())


def journal_key(source: str) -> str:
    """Where the journal of ``source``'s reprocessing lives while it is in flight."""
    return f"{REPROCESS_JOURNAL_PREFIX}/{hashlib.sha256(source.encode()).hexdigest()[:32]}.json"


def _unique(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _summary(errors: list[FieldError]) -> str:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"reprocess: {first.path}: {first.message}{more}"


class Reprocessor:
    """Reprocesses DLQ batches into the raw zone; see the module docstring for the crash-safety protocol."""

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
    ) -> None:
        self.dlq_store = dlq_store
        self.raw_store = raw_store
        self.registry = registry
        self.actor = actor
        self.mapping = mapping
        self.schema_version = schema_version
        self.run_id = run_id or new_run_id()
        self.clock = clock
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

    def plan(self, source: str, attempt_at: datetime) -> _Plan:
        """Validate every entry of ``source`` again; nothing is written."""
        key = parse_batch_key(source)
        if key.error_type in REQUEST_ERROR_TYPES:
            raise ReprocessError(
                f"{source} holds {key.error_type} entries (failed requests, not records); use 'cdp dlq resubmit'"
            )
        entries = read_batch(self.dlq_store, source)
        plan = _Plan(source=source, tenant=key.tenant, provider=key.provider, records=len(entries))
        base_sequence = int(attempt_at.timestamp() * 1_000_000)
        for line, entry in enumerate(entries, start=1):
            stream = str(entry.get("stream") or key.stream)
            version, validator = self._validator(key.tenant, key.provider, stream)
            plan.versions[stream] = version
            origin = f"{source}#L{line}"
            record = entry.get("record")
            errors: list[FieldError]
            mapped: Any = record
            body: dict[str, Any] = {}
            try:
                if self.mapping is not None:
                    mapped = self.mapping.apply(record, stream)
            except RecordMappingError as exc:
                errors = [FieldError(exc.path, exc.message)]
            else:
                if isinstance(mapped, dict):
                    body = {k: v for k, v in mapped.items() if k not in _STRIPPED}
                    errors = validator.errors(body)
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
            plan.dlq_letters[(error_type.value, stream)].append(letter)
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
            payload = gzip_bytes(ndjson(queue.entry(letter) for letter in letters))
            outputs.append(("dlq", key, payload, len(letters)))
        return outputs

    def _store(self, zone: str) -> ObjectStore:
        return self.raw_store if zone == "raw" else self.dlq_store

    def _retire(self, source: str) -> None:
        if self.dlq_store.exists(source):
            self.dlq_store.move(source, f"{RETIRED_PREFIX}/{source}")

    def _execute(self, plan: _Plan, attempt_at: datetime) -> BatchOutcome:
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
        self.dlq_store.write_bytes(journal_key(plan.source), dumps(journal))
        for zone, key, payload, _count in outputs:  # Raw first, then the DLQ: the order _outputs returns.
            self._store(zone).write_bytes(key, payload)
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
        """Reprocess ``sources`` (DLQ keys), after finishing any interrupted attempt; audited unless a dry run."""
        outcomes: list[BatchOutcome] = []
        if not dry_run:
            outcomes.extend(self.recover(key) for key in self.pending_journals())
        # Skip what recovery finished, and the DLQ batches it just completed (a filter may have listed them).
        done = {o.source for o in outcomes if o.status == "recovered"}
        done |= {out["key"] for o in outcomes if o.status == "recovered" for out in o.outputs if out["zone"] == "dlq"}
        for source in dict.fromkeys(sources):
            if on_batch is not None:
                on_batch(source)
            if source in done:
                continue
            try:
                if not self.dlq_store.exists(source):
                    if self.dlq_store.exists(f"{RETIRED_PREFIX}/{source}"):
                        outcomes.append(BatchOutcome(source, "already_done", message="already retired"))
                        continue
                    get_batch(self.dlq_store, source)  # Raises the standard "no such batch" error.
                attempt_at = self.clock()
                plan = self.plan(source, attempt_at)
                if dry_run:
                    outcomes.append(
                        BatchOutcome(
                            source=source,
                            status="dry_run",
                            records=plan.records,
                            passed=plan.passed,
                            failed=plan.failed,
                            schema_versions=plan.versions,
                            new_errors=dict(plan.new_errors.most_common()),
                        )
                    )
                    continue
                outcomes.append(self._execute(plan, attempt_at))
            except (ReprocessError, BatchNotFoundError) as exc:
                outcomes.append(BatchOutcome(source, "failed", message=str(exc)))
            except (zlib.error, orjson.JSONDecodeError) as exc:
                message = f"{source} is not gzip NDJSON ({exc}); inspect it by hand, it was left as it is"
                outcomes.append(BatchOutcome(source, "failed", message=message))
        report = ReprocessReport(outcomes=outcomes, dry_run=dry_run)
        changed = [o for o in outcomes if o.status in ("reprocessed", "recovered", "rolled_back")]
        if not dry_run and changed:
            report.audit_key = self._audit(report, parameters or {})
        return report

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
            outcome="ok" if report.ok else "partial",
            details={"batches": [o.as_dict() for o in report.outcomes]},
        )
        return AuditLog(self.dlq_store).record(entry)
