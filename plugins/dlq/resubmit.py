"""Resubmitting failed extractions: re-run the failed stream window through its tap with Meltano.

``extraction_failed``, ``rate_limit_exhausted`` and ``auth_failed`` entries describe a request that failed, not a
record. Their ``context`` (written by ``plugins/connectors/tap_runtime.py``) names the ``stream`` and the ``bookmark``
the stream had before the failed sync. For each entry, resubmit runs::

    meltano --environment ENV el tap-PROVIDER target-s3raw --select STREAM \
        --state <file holding {"bookmarks": {STREAM: bookmark}}> --state-id cdp-resubmit-<hash>

so the tap starts exactly where the failed sync did, its records go through target-s3raw as usual, and the run's own
state stays apart from the regular pipeline's (its own state id). A batch is retired (moved to ``_retired/``) once
every entry in it ran successfully; a failed run leaves the batch as it was (the tap writes a fresh DLQ entry for the
new failure). Each batch is resubmitted under its lease (``_lease/resubmit/``, see ``plugins/core/leases.py``), so two
resubmit runs at once never extract the same window twice: a batch another live run holds is skipped with a note.
Delivery is at least once: a crash after Meltano succeeded but before the batch was retired re-extracts
the window on the next resubmit; the raw zone's consumers dedupe by primary key, as for any Singer re-sync.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from plugins.core.dead_letters import new_run_id
from plugins.core.errors import CdpError
from plugins.core.layout import parse_batch_key
from plugins.core.leases import DEFAULT_LEASE_TTL, Lease, LeaseBusy, LeaseLostError, LeaseManager
from plugins.core.serialization import dumps
from plugins.core.storage import ObjectStore
from plugins.dlq.audit import AuditEntry, AuditLog
from plugins.dlq.ops import (
    REQUEST_ERROR_TYPES,
    RESUBMIT_LEASE_PREFIX,
    RETIRED_PREFIX,
    BatchNotFoundError,
    BatchRunReport,
    get_batch,
    read_entries,
)
from plugins.meltano.project import MeltanoError, run_meltano

DEFAULT_LOADER = "target-s3raw"
_ERROR_LINE_RE = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")
MeltanoRunner = Callable[..., Any]


class ResubmitError(CdpError):
    """A batch cannot be resubmitted (wrong error type, no stream in its context)."""


@dataclass
class ResubmitOutcome:
    """What happened (or would happen) to one batch of failed requests."""

    source: str
    status: str  # resubmitted | dry_run | failed | already_done | skipped
    entries: int = 0
    commands: list[list[str]] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "entries": self.entries,
            "commands": [" ".join(command) for command in self.commands],
            "message": self.message,
        }


@dataclass
class ResubmitReport(BatchRunReport[ResubmitOutcome]):
    """Every entry batch's resubmit outcome and the audit entry written for the run."""


def _failure_summary(exc: MeltanoError) -> str:
    """The command's one-line failure plus Meltano's own error line (``RunnerError: Extractor failed``)."""
    lines = [text.strip() for text in str(exc).splitlines() if text.strip()]
    errors = [text for text in lines[1:] if _ERROR_LINE_RE.match(text)]
    return f"{lines[0].rstrip(':')} ({errors[-1][:300]})" if errors else lines[0].rstrip(":")


def _env_prefix(plugin: str) -> str:
    return plugin.upper().replace("-", "_")


class Resubmitter:
    """Re-runs failed extractions through Meltano and retires the batches that succeed."""

    def __init__(
        self,
        dlq_store: ObjectStore,
        *,
        project_root: Path,
        actor: str,
        environment: str = "dev",
        loader: str = DEFAULT_LOADER,
        raw_url: str | None = None,
        registry_url: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        runner: MeltanoRunner = run_meltano,
        timeout: float | None = None,
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
    ) -> None:
        self.dlq_store = dlq_store
        self.project_root = project_root
        self.actor = actor
        self.environment = environment
        self.loader = loader
        self.raw_url = raw_url
        self.registry_url = registry_url
        self.extra_env = dict(extra_env or {})
        self.runner = runner
        self.timeout = timeout
        self.leases = LeaseManager(dlq_store, RESUBMIT_LEASE_PREFIX, run_id=new_run_id(), ttl=lease_ttl)

    def _command(self, extractor: str, stream: str, state_file: str, state_id: str) -> list[str]:
        return ["el", extractor, self.loader, "--select", stream, "--state", state_file, "--state-id", state_id]

    def _env(self, extractor: str, tenant: str, provider: str) -> dict[str, str]:
        loader, tap = _env_prefix(self.loader), _env_prefix(extractor)
        env = {
            f"{loader}_TENANT": tenant,
            f"{loader}_PROVIDER": provider,
            f"{loader}_DLQ_URL": self.dlq_store.url_for(""),
            f"{tap}_TENANT": tenant,
            f"{tap}_DLQ_URL": self.dlq_store.url_for(""),
        }
        if self.raw_url:
            env[f"{loader}_RAW_URL"] = self.raw_url
        if self.registry_url:
            env[f"{loader}_REGISTRY_URL"] = self.registry_url
        env.update(self.extra_env)
        return env

    def _jobs(self, source: str) -> list[tuple[str, dict[str, Any], str]]:
        """``(extractor, state, stream)`` for each entry of ``source``."""
        key = parse_batch_key(source)
        if key.error_type not in REQUEST_ERROR_TYPES:
            raise ResubmitError(
                f"{source} holds {key.error_type} entries (records, not failed requests); use 'cdp dlq reprocess'"
            )
        jobs = []
        for line, entry in enumerate(read_entries(self.dlq_store, source), start=1):
            context = entry.get("context") or {}
            stream = context.get("stream") or entry.get("stream")
            if not stream:
                raise ResubmitError(f"{source} line {line}: the entry names no stream in its context")
            bookmark = context.get("bookmark")
            state: dict[str, Any] = {"bookmarks": {stream: bookmark}} if isinstance(bookmark, dict) and bookmark else {}
            extractor = str(context.get("extractor") or f"tap-{key.provider}")
            jobs.append((extractor, state, str(stream)))
        return jobs

    def run(
        self,
        sources: Iterable[str],
        *,
        dry_run: bool = False,
        parameters: dict[str, Any] | None = None,
        on_batch: Callable[[str], None] | None = None,
    ) -> ResubmitReport:
        outcomes = []
        for source in dict.fromkeys(sources):
            if on_batch is not None:
                on_batch(source)
            lease = None if dry_run else self.leases.acquire(source)
            if isinstance(lease, LeaseBusy):
                note = f"skipped: {lease.describe(self.leases.clock())}; run resubmit again once it has finished"
                outcomes.append(ResubmitOutcome(source, "skipped", message=note))
                continue
            try:
                outcomes.append(self._resubmit(source, dry_run, lease))
            except (ResubmitError, BatchNotFoundError, LeaseLostError) as exc:
                outcomes.append(ResubmitOutcome(source, "failed", message=str(exc)))
            finally:
                if lease is not None:
                    lease.release()
        report = ResubmitReport(outcomes=outcomes, dry_run=dry_run)
        ran = [o for o in outcomes if o.commands and o.status in ("resubmitted", "failed")]
        if not dry_run and ran:
            done = [o for o in ran if o.status == "resubmitted"]
            entry = AuditEntry(
                action="resubmit",
                actor=self.actor,
                parameters={**(parameters or {}), "environment": self.environment, "loader": self.loader},
                batches=[o.source for o in ran],
                counts_before={"dlq_batches": len(ran), "dlq_entries": sum(o.entries for o in ran)},
                counts_after={
                    "dlq_batches": len(ran) - len(done),
                    "dlq_entries": sum(o.entries for o in ran) - sum(o.entries for o in done),
                    "retired_batches": len(done),
                },
                outcome="ok" if report.ok else "partial",
                details={"batches": [o.as_dict() for o in ran]},
            )
            report.audit_key = AuditLog(self.dlq_store).record(entry)
        return report

    def _resubmit(self, source: str, dry_run: bool, lease: Lease | None) -> ResubmitOutcome:
        if not self.dlq_store.exists(source) and self.dlq_store.exists(f"{RETIRED_PREFIX}/{source}"):
            return ResubmitOutcome(source, "already_done", message="already retired")
        batch = get_batch(self.dlq_store, source)
        jobs = self._jobs(source)
        outcome = ResubmitOutcome(source, "dry_run" if dry_run else "resubmitted", entries=len(jobs))
        with tempfile.TemporaryDirectory(prefix="cdp-resubmit-") as folder:
            for line, (extractor, state, stream) in enumerate(jobs, start=1):
                state_file = Path(folder) / f"state_{line}.json"
                state_file.write_bytes(dumps(state))
                state_id = f"cdp-resubmit-{hashlib.sha256(f'{source}#L{line}'.encode()).hexdigest()[:16]}"
                command = self._command(extractor, stream, str(state_file), state_id)
                outcome.commands.append(["meltano", "--environment", self.environment, *command])
                if dry_run:
                    start = dumps(state.get("bookmarks", {}).get(stream)).decode() if state else "start_date"
                    outcome.message = "; ".join(filter(None, [outcome.message, f"{stream} from {start}"]))
                    continue
                if lease is not None:
                    lease.ensure_held()
                try:
                    self.runner(
                        command,
                        project_root=self.project_root,
                        environment=self.environment,
                        extra_env=self._env(extractor, batch.tenant, batch.provider),
                        capture=True,
                        timeout=self.timeout,
                    )
                except MeltanoError as exc:
                    outcome.status = "failed"
                    outcome.message = f"line {line} ({stream}): {_failure_summary(exc)}; the batch stays in the DLQ"
                    return outcome
        if lease is not None:
            lease.ensure_held()
            self.dlq_store.move(source, f"{RETIRED_PREFIX}/{source}")
            outcome.message = "every entry re-ran successfully; the batch is retired"
        return outcome
