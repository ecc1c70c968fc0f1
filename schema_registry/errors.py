"""Errors the schema registry raises; each message says what is wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from schema_registry.compatibility import Violation
    from schema_registry.modes import CompatibilityMode

_MAX_LISTED = 5


class SchemaRegistryError(CdpError):
    """Base class of the registry's errors."""


class InvalidSubjectError(SchemaRegistryError, ValueError):
    """A subject name is not ``tenant/provider/stream``."""


class InvalidSchemaError(SchemaRegistryError, ValueError):
    """A document is not a JSON Schema the registry can store."""


class SubjectNotFoundError(SchemaRegistryError, LookupError):
    """The subject has no registered version (or not the version asked for)."""

    def __init__(self, subject: str, version: int | None = None, known: Sequence[int] = ()) -> None:
        self.subject = subject
        self.version = version
        if version is None:
            message = f"subject '{subject}' has no registered schema; register one with 'cdp schema register'"
        elif known:
            message = f"subject '{subject}' has no version {version}; versions are {_ranges(known)}"
        else:
            message = f"subject '{subject}' has no version {version}: it has no registered schema"
        super().__init__(message)


class IncompatibleSchemaError(SchemaRegistryError):
    """A schema breaks the subject's compatibility mode; ``violations`` says where and how."""

    def __init__(
        self,
        subject: str,
        violations: Sequence[Violation],
        mode: CompatibilityMode | None = None,
        against_versions: Sequence[int] = (),
    ) -> None:
        self.subject = subject
        self.violations = list(violations)
        self.mode = mode
        self.against_versions = list(against_versions)
        listed = "; ".join(f"{v.path}: {v.message}" for v in self.violations[:_MAX_LISTED])
        more = len(self.violations) - _MAX_LISTED
        if more > 0:
            listed += f"; and {more} more"
        under = f" under {mode.value}" if mode is not None else ""
        against = f" (against version {_ranges(self.against_versions)})" if self.against_versions else ""
        super().__init__(
            f"schema for '{subject}' is incompatible{under}{against}: {listed}. "
            "Fix the schema, change the subject's mode, or force-register it ('cdp schema register --force')"
        )


class RegistryConflictError(SchemaRegistryError):
    """Registration kept losing races with other writers."""


def _ranges(versions: Sequence[int]) -> str:
    return ", ".join(str(v) for v in versions)
