"""The schema registry: ordered JSON Schema versions per subject, kept in an object store.

Layout under the registry URL::

    config.json                                               registry-wide default mode (optional)
    subjects/{tenant}/{provider}/{stream}/config.json         the subject's mode (optional)
    subjects/{tenant}/{provider}/{stream}/versions/000001.json one file per version, created once

A version file is created with ``put_if_absent``, so two writers can never both create version n: the loser re-reads,
returns the winner's version when it registered the same schema, and otherwise checks its schema again against the
new latest and tries n+1. Nothing is ever overwritten.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from plugins.core.errors import ConfigError, ObjectNotFoundError
from plugins.core.events import log_event
from plugins.core.layout import sanitize_stream_name, validate_name
from plugins.core.schema_dialect import (
    DIALECT,
    SchemaDialectError,
    UnresolvableReferenceError,
    check_schema,
    to_dialect,
)
from plugins.core.storage import ObjectStore
from schema_registry.compatibility import Violation, check_against
from schema_registry.errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    InvalidSubjectError,
    RegistryConflictError,
    SchemaRegistryError,
    SubjectNotFoundError,
)
from schema_registry.modes import DEFAULT_MODE, CompatibilityMode
from schema_registry.normalize import fingerprint as schema_fingerprint

logger = logging.getLogger(__name__)

SUBJECTS_PREFIX = "subjects"
CONFIG_FILE = "config.json"
_VERSION_FILE_RE = re.compile(r"^(\d{6,})\.json$")
_STREAM_RE = re.compile(r"^[a-z0-9_]+$")
_MAX_ATTEMPTS = 100


def subject_name(tenant: str, provider: str, stream: str) -> str:
    """``tenant/provider/stream``, with the stream reduced to ``[a-z0-9_]`` as in the raw zone's file names."""
    validate_name("tenant", tenant)
    validate_name("provider", provider)
    return f"{tenant}/{provider}/{sanitize_stream_name(stream)}"


def parse_subject(subject: str) -> tuple[str, str, str]:
    """``(tenant, provider, stream)`` of a subject name; raises InvalidSubjectError for anything else."""
    parts = subject.split("/") if isinstance(subject, str) else []
    if len(parts) != 3:
        raise InvalidSubjectError(f"subject '{subject}' must be tenant/provider/stream, e.g. acme/stripe/customers")
    tenant, provider, stream = parts
    try:
        validate_name("tenant", tenant)
        validate_name("provider", provider)
    except ConfigError as exc:
        raise InvalidSubjectError(f"subject '{subject}': {exc.setting} {exc.problem}") from None
    if not _STREAM_RE.fullmatch(stream):
        raise InvalidSubjectError(
            f"subject '{subject}': stream '{stream}' must be [a-z0-9_]; use '{sanitize_stream_name(stream)}'"
        )
    return tenant, provider, stream


@dataclass(frozen=True)
class SchemaVersion:
    """One registered version of a subject's schema."""

    subject: str
    version: int
    schema: dict[str, Any]
    fingerprint: str
    registered_at: datetime
    forced: bool = False
    dialect: str = DIALECT  # The JSON Schema draft ``schema`` is read in; every version since 2020-12 declares it.

    def as_dict(self) -> dict[str, Any]:
        """The stored form (and the ``--json`` form): stable keys, ISO-8601 UTC time."""
        return {
            "subject": self.subject,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "registered_at": self.registered_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "forced": self.forced,
            "dialect": self.dialect,
            "schema": self.schema,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchemaVersion:
        """Read the stored form back."""
        registered = datetime.fromisoformat(str(data["registered_at"]).replace("Z", "+00:00"))
        return cls(
            subject=data["subject"],
            version=int(data["version"]),
            schema=data["schema"],
            fingerprint=data["fingerprint"],
            registered_at=registered,
            forced=bool(data.get("forced", False)),
            # Versions stored before the dialect was recorded were validated in 2020-12 by the target.
            dialect=str(data.get("dialect", DIALECT)),
        )


@dataclass(frozen=True)
class CompatibilityResult:
    """The answer to "may this schema become the subject's next version?"."""

    compatible: bool
    mode: CompatibilityMode
    violations: list[Violation] = field(default_factory=list)
    against_versions: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Stable keys for ``--json``."""
        return {
            "compatible": self.compatible,
            "mode": self.mode.value,
            "against_versions": self.against_versions,
            "violations": [v.as_dict() for v in self.violations],
        }


@dataclass(frozen=True)
class RegistrationResult:
    """What ``register`` did: ``created`` is False when the schema equals the latest version already."""

    version: SchemaVersion
    created: bool
    compatibility: CompatibilityResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """Stable keys for ``--json``."""
        return {
            "subject": self.version.subject,
            "version": self.version.version,
            "fingerprint": self.version.fingerprint,
            "created": self.created,
            "forced": self.version.forced,
            "violations": [v.as_dict() for v in self.compatibility.violations] if self.compatibility else [],
        }


class SchemaRegistry:
    """Subjects, their versions and modes in one object store (local folder or S3)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"SchemaRegistry({self.store.url!r})"

    @classmethod
    def from_url(cls, url: str, *, s3_endpoint_url: str | None = None) -> SchemaRegistry:
        """A registry at ``url`` (the ``registry_url`` setting)."""
        return cls(ObjectStore(url, s3_endpoint_url=s3_endpoint_url, setting="registry_url"))

    # -- keys -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _subject_prefix(subject: str) -> str:
        tenant, provider, stream = parse_subject(subject)
        return f"{SUBJECTS_PREFIX}/{tenant}/{provider}/{stream}"

    def _version_key(self, subject: str, version: int) -> str:
        return f"{self._subject_prefix(subject)}/versions/{version:06d}.json"

    # -- reads ----------------------------------------------------------------------------------------------------

    def subjects(self) -> list[str]:
        """Every subject with at least one version, sorted."""
        found = set()
        for info in self.store.iter_objects(SUBJECTS_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 6 and parts[4] == "versions" and _VERSION_FILE_RE.fullmatch(parts[5]):
                found.add("/".join(parts[1:4]))
        return sorted(found)

    def versions(self, subject: str) -> list[int]:
        """The subject's version numbers, ascending; ``[]`` for an unknown subject."""
        prefix = f"{self._subject_prefix(subject)}/versions"
        numbers = []
        for info in self.store.iter_objects(prefix):
            match = _VERSION_FILE_RE.fullmatch(info.key.rsplit("/", 1)[-1])
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def get(self, subject: str, version: int) -> SchemaVersion:
        """One version; raises SubjectNotFoundError naming the versions that do exist."""
        try:
            data = self.store.read_bytes(self._version_key(subject, version))
        except ObjectNotFoundError:
            raise SubjectNotFoundError(subject, version, self.versions(subject)) from None
        try:
            return SchemaVersion.from_dict(orjson.loads(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            key = self.store.url_for(self._version_key(subject, version))
            raise SchemaRegistryError(f"version file {key} is corrupt ({exc}); restore it from a backup") from None

    def latest(self, subject: str) -> SchemaVersion | None:
        """The newest version, or None when the subject has none."""
        numbers = self.versions(subject)
        return self.get(subject, numbers[-1]) if numbers else None

    def all_versions(self, subject: str) -> list[SchemaVersion]:
        """Every version of the subject, oldest first."""
        return [self.get(subject, n) for n in self.versions(subject)]

    def lookup(self, subject: str, schema: dict[str, Any]) -> SchemaVersion | None:
        """The newest version whose schema equals ``schema`` (ignoring key order and annotations), if any."""
        try:
            wanted = schema_fingerprint(to_dialect(schema))
        except SchemaDialectError:
            return None
        for version in reversed(self.all_versions(subject)):
            if version.fingerprint == wanted:
                return version
        return None

    # -- modes ----------------------------------------------------------------------------------------------------

    def get_mode(self, subject: str) -> CompatibilityMode:
        """The subject's mode; else the registry-wide default in the store; else ADDITIVE."""
        mode = self._read_mode(f"{self._subject_prefix(subject)}/{CONFIG_FILE}")
        return mode or self.get_default_mode()

    def get_default_mode(self) -> CompatibilityMode:
        """The registry-wide default mode (ADDITIVE unless set)."""
        return self._read_mode(CONFIG_FILE) or DEFAULT_MODE

    def set_mode(self, subject: str, mode: CompatibilityMode | str) -> CompatibilityMode:
        """Set the subject's mode (the subject need not have versions yet)."""
        parsed = CompatibilityMode.parse(mode)
        self.store.write_bytes(f"{self._subject_prefix(subject)}/{CONFIG_FILE}", _config_bytes(parsed))
        log_event(logger, "schema_mode_set", subject=subject, mode=parsed.value)
        return parsed

    def set_default_mode(self, mode: CompatibilityMode | str) -> CompatibilityMode:
        """Set the registry-wide default mode, used by every subject without its own."""
        parsed = CompatibilityMode.parse(mode)
        self.store.write_bytes(CONFIG_FILE, _config_bytes(parsed))
        log_event(logger, "schema_default_mode_set", mode=parsed.value)
        return parsed

    def _read_mode(self, key: str) -> CompatibilityMode | None:
        try:
            data = orjson.loads(self.store.read_bytes(key))
        except ObjectNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            raise SchemaRegistryError(f"{self.store.url_for(key)} is not JSON ({exc}); fix or delete it") from None
        value = data.get("compatibility") if isinstance(data, dict) else None
        if value is None:
            return None
        return CompatibilityMode.parse(value)

    # -- compatibility and registration ---------------------------------------------------------------------------

    def check(self, subject: str, schema: dict[str, Any]) -> CompatibilityResult:
        """Whether ``schema`` may become the subject's next version under its mode (a first version always may)."""
        schema = validate_schema(schema)
        mode = self.get_mode(subject)
        return self._check(subject, schema, mode, self.versions(subject))

    def _check(
        self, subject: str, schema: dict[str, Any], mode: CompatibilityMode, numbers: list[int]
    ) -> CompatibilityResult:
        if mode is CompatibilityMode.NONE or not numbers:
            return CompatibilityResult(compatible=True, mode=mode)
        against = numbers if mode.transitive else numbers[-1:]
        existing = [(n, to_dialect(self.get(subject, n).schema)) for n in against]
        violations = check_against(schema, existing, mode)
        return CompatibilityResult(
            compatible=not violations, mode=mode, violations=violations, against_versions=list(against)
        )

    def register(self, subject: str, schema: dict[str, Any], *, force: bool = False) -> RegistrationResult:
        """Make ``schema`` the subject's latest version.

        Equal to the latest (ignoring key order and annotations): returns it, ``created=False``. Compatible under the
        subject's mode: creates version n+1. Incompatible: raises IncompatibleSchemaError, unless ``force`` (an
        operator's override), which registers it anyway and records ``forced: true``. The stored schema is the
        Draft 2020-12 form of ``schema`` (see ``validate_schema``).
        """
        schema = validate_schema(schema)
        wanted = schema_fingerprint(schema)
        mode = self.get_mode(subject)
        for _attempt in range(_MAX_ATTEMPTS):
            numbers = self.versions(subject)
            latest = self.get(subject, numbers[-1]) if numbers else None
            if latest is not None and latest.fingerprint == wanted:
                return RegistrationResult(version=latest, created=False)
            result = self._check(subject, schema, mode, numbers)
            if not result.compatible and not force:
                raise IncompatibleSchemaError(subject, result.violations, mode, result.against_versions)
            number = (numbers[-1] + 1) if numbers else 1
            version = SchemaVersion(
                subject=subject,
                version=number,
                schema=schema,
                fingerprint=wanted,
                registered_at=datetime.now(UTC),
                forced=not result.compatible,
            )
            data = orjson.dumps(version.as_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            if self.store.put_if_absent(self._version_key(subject, number), data):
                log_event(
                    logger,
                    "schema_registered",
                    subject=subject,
                    version=number,
                    fingerprint=wanted,
                    mode=mode.value,
                    forced=version.forced,
                )
                return RegistrationResult(version=version, created=True, compatibility=result)
            log_event(logger, "schema_registration_race_lost", level=logging.DEBUG, subject=subject, version=number)
        raise RegistryConflictError(
            f"could not register a version of '{subject}' after {_MAX_ATTEMPTS} attempts: other writers kept "
            "registering first; try again"
        )


def validate_schema(schema: Any) -> dict[str, Any]:
    """``schema`` in the registry's dialect (Draft 2020-12, ``$schema`` declared; older drafts converted).

    Raises InvalidSchemaError unless it is a JSON Schema object that its metaschema accepts and whose every ``$ref``
    resolves inside it (nothing is fetched or read from a file).
    """
    if not isinstance(schema, dict):
        raise InvalidSchemaError(f"a schema must be a JSON object, not {type(schema).__name__}")
    try:
        converted = to_dialect(schema)
        check_schema(converted)
    except (SchemaDialectError, UnresolvableReferenceError, ValueError) as exc:
        raise InvalidSchemaError(str(exc)) from None
    return converted


def _config_bytes(mode: CompatibilityMode) -> bytes:
    return orjson.dumps({"compatibility": mode.value}, option=orjson.OPT_INDENT_2)
