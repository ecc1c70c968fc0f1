"""Schema drift: each SCHEMA message against the registry, undeclared properties per run, and the alerts for both."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plugins.alerts import raise_alert
from plugins.core.dead_letters import FieldError
from plugins.core.events import log_event
from plugins.descriptors import Alert, AlertSink, Severity
from schema_registry import IncompatibleSchemaError, SchemaRegistry, diff_schemas, subject_name

logger = logging.getLogger("target_s3raw.drift")


class AlertDispatcher:
    """Raises alerts scoped to one tenant and provider, through the registered sinks plus the target's own."""

    def __init__(self, tenant: str, provider: str, extra_sinks: Sequence[AlertSink] = ()) -> None:
        self.tenant = tenant
        self.provider = provider
        self.extra_sinks = list(extra_sinks)

    def raise_(self, kind: str, severity: Severity, message: str, stream: str | None = None, **details: Any) -> None:
        alert = Alert(
            kind=kind,
            severity=severity,
            message=message,
            tenant=self.tenant,
            provider=self.provider,
            stream=stream,
            details=details,
        )
        raise_alert(alert, extra_sinks=self.extra_sinks)


@dataclass(frozen=True)
class SchemaDecision:
    """How a stream's records are written under its current SCHEMA message."""

    version: int | None  # The registered version records are validated and written under.
    incompatible: bool = False  # True: records go to the DLQ as schema_incompatible.
    violations: list[FieldError] = field(default_factory=list)
    latest_version: int | None = None


class SchemaTracker:
    """Registers each stream's schema: v1 first, a new version for a compatible change, nothing when identical."""

    def __init__(self, registry: SchemaRegistry, tenant: str, provider: str, alerts: AlertDispatcher) -> None:
        self.registry = registry
        self.tenant = tenant
        self.provider = provider
        self.alerts = alerts

    def resolve(self, stream: str, schema: dict[str, Any]) -> SchemaDecision:
        """Register ``schema`` for ``stream`` (raising the drift alerts) and say how its records are written."""
        subject = subject_name(self.tenant, self.provider, stream)
        previous = self.registry.latest(subject)
        try:
            result = self.registry.register(subject, schema)
        except IncompatibleSchemaError as exc:
            latest = self.registry.latest(subject)
            violations = [FieldError(v.path, v.message) for v in exc.violations]
            self.alerts.raise_(
                "schema_incompatible",
                Severity.ERROR,
                f"stream '{stream}' sent a schema that breaks subject '{subject}' "
                f"({exc.mode.value if exc.mode else 'its mode'}); its records go to the DLQ as schema_incompatible "
                "until an operator registers a schema ('cdp schema register')",
                stream=stream,
                subject=subject,
                latest_version=latest.version if latest else None,
                violations=[f"{v.path}: {v.message}" for v in violations[:10]],
            )
            return SchemaDecision(
                version=None,
                incompatible=True,
                violations=violations,
                latest_version=latest.version if latest else None,
            )
        version = result.version.version
        if result.created and previous is not None:
            changes = diff_schemas(previous.schema, result.version.schema)
            self.alerts.raise_(
                "schema_drift",
                Severity.INFO,
                f"stream '{stream}' changed its schema compatibly: subject '{subject}' is now at version {version}",
                stream=stream,
                subject=subject,
                from_version=previous.version,
                to_version=version,
                changes=[change.describe() for change in changes[:20]],
            )
        elif result.created:
            log_event(logger, "schema_registered", stream=stream, subject=subject, version=version)
        return SchemaDecision(version=version, latest_version=version)


class UndeclaredProperties:
    """Counts, per stream and property, records carrying properties their schema does not declare.

    The first record with a given property raises one ``schema_drift`` warning per run; the totals are logged at
    the end of the run.
    """

    def __init__(self, alerts: AlertDispatcher) -> None:
        self.alerts = alerts
        self.counts: Counter[tuple[str, str]] = Counter()

    def record(self, stream: str, paths: list[str], version: int | None) -> None:
        for path in paths:
            key = (stream, path)
            if key not in self.counts:
                self.alerts.raise_(
                    "schema_drift",
                    Severity.WARNING,
                    f"stream '{stream}' sends property {path} that schema version {version} does not declare; "
                    "records keep it in the raw zone",
                    stream=stream,
                    property=path,
                    schema_version=version,
                )
            self.counts[key] += 1

    def log_summary(self) -> None:
        for (stream, path), count in sorted(self.counts.items()):
            log_event(logger, "undeclared_property", logging.WARNING, stream=stream, property=path, records=count)
