"""Record mappings: the small fix support applies to dead letters before they are validated again.

A mapping file is YAML or JSON with up to four steps, applied in this order, plus an optional stream list::

    streams: [customers]          # optional: only records of these streams are mapped
    rename: {email_address: email, "address.zip": address.postal_code}
    drop: [legacy_id, metadata.debug]
    set: {currency: usd}          # sets the value whether or not the property exists
    cast: {amount: integer, "address.number": string}   # integer, number, string, boolean

Paths are property names joined by ``.`` from the record root. A rename, drop or cast of a property the record does
not have does nothing. For the hard cases, a Python file (``.py``) defines ``map_record(record, stream)`` returning
the fixed record (a new dict or the same one changed in place). A record whose mapping raises keeps failing: it goes
back to the DLQ with the mapping's error.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import yaml

from plugins.core.errors import CdpError, ConfigError

STEPS = ("rename", "drop", "set", "cast")
CAST_TYPES = ("integer", "number", "string", "boolean")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class MappingExitError(CdpError):
    """A Python mapping called ``sys.exit`` (or raised SystemExit): the run stops, after auditing what it did."""


class RecordMappingError(ValueError):
    """One record could not be mapped; ``path`` locates the problem (``$.amount``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def _split(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not part for part in parts):
        raise ValueError(f"'{path}' is not a property path like name or address.city")
    return parts


def _json_path(parts: list[str]) -> str:
    return "$." + ".".join(parts)


def _parent(record: dict[str, Any], parts: list[str], *, create: bool) -> dict[str, Any] | None:
    node: Any = record
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return None
        if part not in node or node[part] is None:
            if not create:
                return None
            node[part] = {}
        node = node[part]
    return node if isinstance(node, dict) else None


def _cast(value: Any, to: str, path: str) -> Any:
    if value is None:
        return None
    try:
        if to == "string":
            return value if isinstance(value, str) else orjson.dumps(value).decode().strip('"')
        if to == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"'{value}' is not a boolean")
        if isinstance(value, bool):
            raise ValueError(f"{value} is a boolean")
        if isinstance(value, int):
            return value
        number = Decimal(str(value).strip())
        if not number.is_finite():
            raise ValueError(f"{value} is not a finite number")
        if to == "integer":
            if number != number.to_integral_value():
                raise ValueError(f"{value} is not a whole number")
            return int(number)
        return float(number)
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise RecordMappingError(path, f"cannot cast {value!r} to {to}: {exc}") from None


@dataclass(frozen=True)
class RecordMapping:
    """A mapping loaded from a file; ``apply`` returns the mapped copy of a record."""

    source: str
    digest: str
    streams: frozenset[str] | None = None
    rename: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    set_values: dict[str, Any] = field(default_factory=dict)
    cast: dict[str, str] = field(default_factory=dict)
    function: Callable[[dict[str, Any], str], Any] | None = None

    def applies_to(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    def apply(self, record: Any, stream: str) -> Any:
        """The mapped copy of ``record``; raises RecordMappingError when this record cannot be mapped."""
        if not self.applies_to(stream):
            return record
        mapped = copy.deepcopy(record)
        if self.function is not None:
            try:
                result = self.function(mapped, stream)
            except Exception as exc:  # Any failure of the user's function is this record's error, not the run's.
                raise RecordMappingError("$", f"map_record failed: {type(exc).__name__}: {exc}") from exc
            except SystemExit as exc:  # Not a record's problem: the map asked to stop, so the run stops cleanly.
                raise MappingExitError(
                    f"--map {self.source}: map_record called sys.exit({exc.code!r}) on a {stream} record; "
                    "the run stopped there (batches already done are kept and audited); fix the map and run again"
                ) from None
            return mapped if result is None else result
        if not isinstance(mapped, dict):
            raise RecordMappingError("$", f"the record is a {type(mapped).__name__}, not an object")
        for old, new in self.rename.items():
            old_parts, new_parts = _split(old), _split(new)
            parent = _parent(mapped, old_parts, create=False)
            if parent is None or old_parts[-1] not in parent:
                continue
            value = parent.pop(old_parts[-1])
            target = _parent(mapped, new_parts, create=True)
            if target is None:
                raise RecordMappingError(_json_path(new_parts), "the parent of the new name is not an object")
            target[new_parts[-1]] = value
        for path in self.drop:
            parts = _split(path)
            parent = _parent(mapped, parts, create=False)
            if parent is not None:
                parent.pop(parts[-1], None)
        for path, value in self.set_values.items():
            parts = _split(path)
            parent = _parent(mapped, parts, create=True)
            if parent is None:
                raise RecordMappingError(_json_path(parts), "the parent of this property is not an object")
            parent[parts[-1]] = copy.deepcopy(value)
        for path, to in self.cast.items():
            parts = _split(path)
            parent = _parent(mapped, parts, create=False)
            if parent is not None and parts[-1] in parent:
                parent[parts[-1]] = _cast(parent[parts[-1]], to, _json_path(parts))
        return mapped

    def describe(self) -> dict[str, Any]:
        """What the audit log and the journal record about this mapping (never record contents)."""
        return {"file": self.source, "sha256": self.digest, "kind": "python" if self.function else "declarative"}


def _setting(path: Path, step: str) -> str:
    return f"--map {path} ({step})"


def _validate_paths(path: Path, step: str, values: list[Any]) -> None:
    for value in values:
        if not isinstance(value, str):  # YAML reads `1:` or `true:` as a number or a boolean, not a name.
            raise ConfigError(
                _setting(path, step), f"{value!r} is a {type(value).__name__}, not a property path; quote it"
            )
        try:
            _split(value)
        except ValueError as exc:
            raise ConfigError(_setting(path, step), str(exc)) from None


def _load_python(path: Path, digest: str) -> RecordMapping:
    spec = importlib.util.spec_from_file_location(f"cdp_record_mapping_{digest[:12]}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--map {path}", "cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"--map {path}", f"failed to import: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, "map_record", None)
    if not callable(function):
        raise ConfigError(f"--map {path}", "defines no function map_record(record, stream) -> record")
    streams = getattr(module, "STREAMS", None)
    return RecordMapping(
        source=str(path),
        digest=digest,
        streams=frozenset(streams) if streams else None,
        function=function,
    )


def load_mapping(file: str | Path) -> RecordMapping:
    """Load and check a mapping file (``.yaml``/``.yml``/``.json`` or ``.py``); a bad file fails naming the step."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError("--map", f"'{path}' is not a file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".py":
        return _load_python(path, digest)
    try:
        spec = orjson.loads(data) if path.suffix == ".json" else yaml.safe_load(data)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--map {path}", f"is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"--map {path}", "must be a mapping with keys among streams, " + ", ".join(STEPS))
    unknown = sorted(set(spec) - {"streams", *STEPS})
    if unknown:
        raise ConfigError(f"--map {path}", f"unknown keys {unknown}; use streams, {', '.join(STEPS)}")
    rename = spec.get("rename") or {}
    drop = spec.get("drop") or []
    set_values = spec.get("set") or {}
    cast = spec.get("cast") or {}
    streams = spec.get("streams")
    if isinstance(drop, str):
        drop = [drop]
    if not isinstance(rename, dict):
        raise ConfigError(_setting(path, "rename"), "must map old property paths to new ones")
    if not isinstance(drop, list):
        raise ConfigError(_setting(path, "drop"), "must be a list of property paths")
    if not isinstance(set_values, dict):
        raise ConfigError(_setting(path, "set"), "must map property paths to values")
    if not isinstance(cast, dict):
        raise ConfigError(_setting(path, "cast"), f"must map property paths to one of {', '.join(CAST_TYPES)}")
    if streams is not None and (not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)):
        raise ConfigError(_setting(path, "streams"), "must be a list of stream names")
    _validate_paths(path, "rename", [*rename, *rename.values()])
    _validate_paths(path, "drop", drop)
    _validate_paths(path, "set", list(set_values))
    _validate_paths(path, "cast", list(cast))
    bad_casts = {k: v for k, v in cast.items() if v not in CAST_TYPES}
    if bad_casts:
        raise ConfigError(_setting(path, "cast"), f"{bad_casts} : types must be one of {', '.join(CAST_TYPES)}")
    return RecordMapping(
        source=str(path),
        digest=digest,
        streams=frozenset(streams) if streams else None,
        rename={str(k): str(v) for k, v in rename.items()},
        drop=tuple(drop),
        set_values={str(k): v for k, v in set_values.items()},
        cast={str(k): str(v) for k, v in cast.items()},
    )
