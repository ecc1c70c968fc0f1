"""Compatibility modes: Confluent Schema Registry's meaning, adapted to JSON Schema, plus ``ADDITIVE``."""

from __future__ import annotations

from enum import StrEnum

from schema_registry.errors import SchemaRegistryError


class CompatibilityMode(StrEnum):
    """Which schema changes a subject accepts.

    BACKWARD: the new schema can read data written with the old one. FORWARD: the old schema can read data written
    with the new one. FULL: both. The ``_TRANSITIVE`` forms check against every version, the others only the latest.
    ADDITIVE (the default): BACKWARD against the latest, and no property may be removed either.
    NONE: anything goes.
    """

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    ADDITIVE = "ADDITIVE"

    @classmethod
    def parse(cls, value: str | CompatibilityMode) -> CompatibilityMode:
        """A mode from its name, case-insensitive (``full-transitive`` works too)."""
        if isinstance(value, CompatibilityMode):
            return value
        name = str(value).strip().upper().replace("-", "_")
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(mode.value for mode in cls)
            raise SchemaRegistryError(f"unknown compatibility mode '{value}'; choose one of {choices}") from None

    @property
    def transitive(self) -> bool:
        """Whether the check runs against every earlier version rather than only the latest."""
        return self.value.endswith("_TRANSITIVE")

    @property
    def checks_backward(self) -> bool:
        """Whether the new schema must read data written with the old one(s)."""
        return self in (
            CompatibilityMode.BACKWARD,
            CompatibilityMode.BACKWARD_TRANSITIVE,
            CompatibilityMode.FULL,
            CompatibilityMode.FULL_TRANSITIVE,
            CompatibilityMode.ADDITIVE,
        )

    @property
    def checks_forward(self) -> bool:
        """Whether the old schema(s) must read data written with the new one."""
        return self in (
            CompatibilityMode.FORWARD,
            CompatibilityMode.FORWARD_TRANSITIVE,
            CompatibilityMode.FULL,
            CompatibilityMode.FULL_TRANSITIVE,
        )


DEFAULT_MODE = CompatibilityMode.ADDITIVE
