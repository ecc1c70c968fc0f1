"""Record validation against a stream's JSON Schema: compiled once per schema, every error with its JSON path.

``RecordValidator.for_schema(schema)`` returns the validator of a schema, compiled on first use and cached by the
schema's content, so every writer (target-s3raw, the DLQ reprocessor) shares one compiled validator per version.
The fast check is jsonschema-rs (Rust). Values it cannot take (integers beyond 64 bits) fall back to python-jsonschema
with ``multipleOf`` in exact decimal arithmetic, so both paths give the same verdicts on our test table
(tests/test_target_s3raw_validation.py). Stock python-jsonschema does not: its float arithmetic refuses 19.99 as a
multiple of 0.01, which jsonschema-rs (correctly) accepts. Every schema is read in Draft 2020-12 (older drafts are
converted, see ``plugins.core.schema_dialect``), ``$ref`` is resolved only inside the schema, and, like singer-sdk's
default validator, string formats are not checked.

``undeclared(record)`` lists the properties a record carries that its schema does not declare (drift), as JSON paths.
Only objects whose schema lists ``properties`` (and no ``patternProperties`` or schema-valued
``additionalProperties``) declare their keys; free-form objects never report drift.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from plugins.core.dead_letters import FieldError
from plugins.core.errors import CdpError
from plugins.core.schema_dialect import (
    SchemaDialectError,
    UnresolvableReferenceError,
    check_schema,
    compile_fast,
    reference_validator,
    to_dialect,
)

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CACHE_SIZE = 256
_ARRAY_STEP = "[]"


class InvalidRecordSchemaError(CdpError, ValueError):
    """A stream's schema is not a valid JSON Schema document."""


def json_path(parts: Iterable[str | int]) -> str:
    """``["address", "city"]`` -> ``$.address.city``; ``[0]`` -> ``$[0]``; odd names quoted: ``$['agent:type']``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == _ARRAY_STEP:
            path += "[*]"
        elif _IDENTIFIER_RE.fullmatch(part):
            path += f".{part}"
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            path += f"['{escaped}']"
    return path


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """The schema's content as canonical JSON (sorted keys): equal documents, equal fingerprints."""
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class _ObjectShape:
    """The properties one object node of a schema declares, and the shapes of its nested objects."""

    declared: frozenset[str] | None  # None: a free-form object (every key is declared)
    children: dict[str, _Shape]


@dataclass(frozen=True)
class _ArrayShape:
    items: _Shape


_Shape = _ObjectShape | _ArrayShape


def _free_form(schema: dict[str, Any], properties: dict[str, Any]) -> bool:
    """Whether an object schema admits keys it does not list: ``patternProperties``, schema-valued
    ``additionalProperties``, or ``"properties": {}`` left open (no ``additionalProperties: false``)."""
    additional = schema.get("additionalProperties")
    if "patternProperties" in schema or isinstance(additional, dict):
        return True
    return not properties and additional is not False


def _shape(schema: Any, depth: int = 0) -> _Shape | None:
    """What drift detection must walk in ``schema``; None where nothing below can be undeclared."""
    if not isinstance(schema, dict) or depth > 32:
        return None
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return None  # Declarations spread over alternatives: treat as free-form.
    properties = schema.get("properties")
    if isinstance(properties, dict):
        free_form = _free_form(schema, properties)
        children = {}
        for name, sub in properties.items():
            child = _shape(sub, depth + 1)
            if child is not None:
                children[name] = child
        declared = None if free_form else frozenset(properties)
        if declared is None and not children:
            return None
        return _ObjectShape(declared=declared, children=children)
    items = schema.get("items")
    if isinstance(items, dict):
        child = _shape(items, depth + 1)
        if child is not None:
            return _ArrayShape(items=child)
    return None


def _strict(schema: Any, depth: int = 0) -> Any:
    """A copy of ``schema`` that rejects every undeclared property ``_shape`` would report (for a fast pre-check)."""
    if not isinstance(schema, dict) or depth > 32 or any(c in schema for c in ("anyOf", "oneOf", "allOf")):
        return schema
    copy = dict(schema)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        copy["properties"] = {name: _strict(sub, depth + 1) for name, sub in properties.items()}
        if not _free_form(schema, properties):
            copy["additionalProperties"] = False
    elif isinstance(schema.get("items"), dict):
        copy["items"] = _strict(schema["items"], depth + 1)
    return copy


def _undeclared(value: Any, shape: _Shape, parts: list[str], out: list[str], ignore: frozenset[str]) -> None:
    if isinstance(shape, _ArrayShape):
        if isinstance(value, list):
            for item in value:
                _undeclared(item, shape.items, [*parts, _ARRAY_STEP], out, ignore)
        return
    if not isinstance(value, dict):
        return
    if shape.declared is not None:
        extra = value.keys() - shape.declared
        if extra:
            for name in sorted(extra):
                if not (ignore and not parts and name in ignore):
                    out.append(json_path([*parts, name]))
    for name, child in shape.children.items():
        sub = value.get(name)
        if sub is not None:
            _undeclared(sub, child, [*parts, name], out, ignore)


class RecordValidator:
    """One schema's compiled validator. Build it with ``for_schema`` so each schema is compiled once."""

    _cache: OrderedDict[bytes, RecordValidator] = OrderedDict()
    _lock = threading.Lock()

    def __init__(self, schema: Mapping[str, Any]) -> None:
        if not isinstance(schema, Mapping):
            raise InvalidRecordSchemaError(f"a schema must be a JSON object, not {type(schema).__name__}")
        try:
            self.schema = to_dialect(schema)
            self._fast = check_schema(self.schema)
        except (SchemaDialectError, UnresolvableReferenceError) as exc:
            raise InvalidRecordSchemaError(str(exc)) from None
        except ValueError as exc:
            raise InvalidRecordSchemaError(f"not a usable JSON Schema: {exc}") from None
        import jsonschema  # Imported on first compile: it is slow to import and most commands never validate.

        self._reference = reference_validator(self.schema, format_checker=jsonschema.FormatChecker(formats=()))
        self._shape = _shape(self.schema)
        self._strict: Any = None
        if self._shape is not None:
            try:  # Rust answers "nothing undeclared" for most records; Python walks only the others.
                self._strict = compile_fast(_strict(self.schema), validate_formats=False)
            except ValueError:
                self._strict = None

    @classmethod
    def for_schema(cls, schema: Mapping[str, Any]) -> RecordValidator:
        """The validator of ``schema``, compiled on first use and cached (by content) for every later caller."""
        key = schema_fingerprint(schema)
        with cls._lock:
            cached = cls._cache.get(key)
            if cached is not None:
                cls._cache.move_to_end(key)
                return cached
        validator = cls(schema)
        with cls._lock:
            cls._cache[key] = validator
            while len(cls._cache) > _CACHE_SIZE:
                cls._cache.popitem(last=False)
        return validator

    def is_valid(self, record: Any) -> bool:
        """Whether ``record`` matches the schema (the hot path: no error objects built)."""
        try:
            return bool(self._fast.is_valid(record))
        except (ValueError, TypeError, OverflowError):  # A value jsonschema-rs cannot convert (e.g. a huge int).
            return bool(self._reference.is_valid(record))

    def errors(self, record: Any) -> list[FieldError]:
        """Every problem with ``record`` (not only the first), each located by JSON path; [] when it is valid."""
        try:
            found = [
                FieldError(json_path(list(error.instance_path)), error.message)
                for error in self._fast.iter_errors(record)
            ]
        except (ValueError, TypeError, OverflowError):
            found = [
                FieldError(json_path(list(error.absolute_path)), error.message)
                for error in self._reference.iter_errors(record)
            ]
        return sorted(found, key=lambda error: (error.path, error.message))

    def undeclared(self, record: Any, ignore: frozenset[str] = frozenset()) -> list[str]:
        """JSON paths of the properties ``record`` carries that the schema does not declare (``[*]`` for items).

        ``ignore`` names top-level properties never to report (e.g. the writer's own metadata columns).
        """
        if self._shape is None:
            return []
        if self._strict is not None:
            # A value jsonschema-rs cannot convert (a huge int) falls through to the Python walk below.
            with contextlib.suppress(ValueError, TypeError, OverflowError):
                if self._strict.is_valid(record):
                    return []
        out: list[str] = []
        _undeclared(record, self._shape, [], out, ignore)
        return out
