"""What changed between two schemas, by JSON path of the data: properties added or removed, keywords changed.

Both schemas are normalized first, so annotations and key order never show up as changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from schema_registry.compatibility import child_path
from schema_registry.normalize import normalize_schema

_WALKED = frozenset({"properties", "required", "items", "additionalProperties"})


@dataclass(frozen=True)
class SchemaChange:
    """One difference: ``change`` is added, removed or changed; ``keyword`` is ``property`` or a schema keyword."""

    path: str
    change: str
    keyword: str
    old: Any = None
    new: Any = None

    def as_dict(self) -> dict[str, Any]:
        """Stable keys for ``--json``."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people, e.g. ``$.email: property added`` or ``$.age: type changed: "string" -> "integer"``."""
        if self.keyword == "property":
            return f"{self.path}: property {self.change}"
        if self.keyword == "required":
            return f"{self.path}: {'now required' if self.change == 'added' else 'no longer required'}"
        if self.change == "added":
            return f"{self.path}: {self.keyword} added: {_short(self.new)}"
        if self.change == "removed":
            return f"{self.path}: {self.keyword} removed (was {_short(self.old)})"
        return f"{self.path}: {self.keyword} changed: {_short(self.old)} -> {_short(self.new)}"


def diff_schemas(old: Any, new: Any) -> list[SchemaChange]:
    """Every difference from ``old`` to ``new``, in path order."""
    changes: list[SchemaChange] = []
    _walk(normalize_schema(old), normalize_schema(new), "$", changes)
    return changes


def _walk(old: Any, new: Any, path: str, out: list[SchemaChange]) -> None:
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            out.append(SchemaChange(path, "changed", "schema", old, new))
        return
    old_props: dict[str, Any] = old.get("properties") or {}
    new_props: dict[str, Any] = new.get("properties") or {}
    for name in sorted(old_props.keys() | new_props.keys()):
        where = child_path(path, name)
        if name not in new_props:
            out.append(SchemaChange(where, "removed", "property", old=old_props[name]))
        elif name not in old_props:
            out.append(SchemaChange(where, "added", "property", new=new_props[name]))
        else:
            _walk(old_props[name], new_props[name], where, out)
    old_required, new_required = set(old.get("required") or []), set(new.get("required") or [])
    for name in sorted(old_required ^ new_required):
        out.append(SchemaChange(child_path(path, name), "added" if name in new_required else "removed", "required"))
    for keyword, suffix in (("items", "[*]"), ("additionalProperties", ".*")):
        old_sub, new_sub = old.get(keyword), new.get(keyword)
        if isinstance(old_sub, dict) and isinstance(new_sub, dict):
            _walk(old_sub, new_sub, f"{path}{suffix}", out)
        else:
            _keyword_change(path, keyword, old, new, out)
    for keyword in sorted((old.keys() | new.keys()) - _WALKED):
        _keyword_change(path, keyword, old, new, out)


def _keyword_change(path: str, keyword: str, old: dict[str, Any], new: dict[str, Any], out: list[SchemaChange]) -> None:
    if keyword not in old and keyword not in new:
        return
    if keyword not in old:
        out.append(SchemaChange(path, "added", keyword, new=new[keyword]))
    elif keyword not in new:
        out.append(SchemaChange(path, "removed", keyword, old=old[keyword]))
    elif old[keyword] != new[keyword]:
        out.append(SchemaChange(path, "changed", keyword, old[keyword], new[keyword]))


def _short(value: Any, limit: int = 80) -> str:
    import orjson

    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."
