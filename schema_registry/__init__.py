"""The versioned schema registry: subjects ``{tenant}/{provider}/{stream}`` with JSON Schema versions and a mode.

See docs/schema-registry.md. ``SchemaRegistry(ObjectStore(registry_url))`` is the entry point.

May import: ``plugins.core`` (storage, errors, the JSON Schema dialect). Nothing else in ``plugins``, never a connector.
"""

from schema_registry.compatibility import Violation, can_read, check_against
from schema_registry.diff import SchemaChange, diff_schemas
from schema_registry.errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    InvalidSubjectError,
    RegistryConflictError,
    SchemaRegistryError,
    SubjectNotFoundError,
)
from schema_registry.modes import DEFAULT_MODE, CompatibilityMode
from schema_registry.normalize import fingerprint, normalize_schema
from schema_registry.registry import (
    CompatibilityResult,
    RegistrationResult,
    SchemaRegistry,
    SchemaVersion,
    parse_subject,
    subject_name,
    validate_schema,
)

__all__ = [
    "DEFAULT_MODE",
    "CompatibilityMode",
    "CompatibilityResult",
    "IncompatibleSchemaError",
    "InvalidSchemaError",
    "InvalidSubjectError",
    "RegistrationResult",
    "RegistryConflictError",
    "SchemaChange",
    "SchemaRegistry",
    "SchemaRegistryError",
    "SchemaVersion",
    "SubjectNotFoundError",
    "Violation",
    "can_read",
    "check_against",
    "diff_schemas",
    "fingerprint",
    "normalize_schema",
    "parse_subject",
    "subject_name",
    "validate_schema",
]
