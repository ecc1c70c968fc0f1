"""Whether one JSON Schema can read the data another one admits, explained violation by violation.

The core question is ``can_read(reader, writer)``: does every document valid under ``writer`` validate under
``reader``? BACKWARD asks it with the new schema as reader and an old one as writer; FORWARD the other way round;
FULL both. ADDITIVE is BACKWARD plus "no declared property disappears".

Objects follow an open content model, as Avro and Singer do: a reader ignores properties it does not declare unless
it sets ``additionalProperties: false``. So adding or dropping an optional property is BACKWARD and FORWARD compatible
(ADDITIVE still refuses drops), while closing the content model, adding a required property, narrowing a type, an
enum, a format, a length or a range is not. Violations carry the JSON path of the data they concern
(``$.address.city``, ``$.tags[*]``) and say which schema accepts what.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from schema_registry.modes import CompatibilityMode
from schema_registry.normalize import canonical_json

_JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_REF_DEPTH = 32


@dataclass(frozen=True)
class Violation:
    """One reason a schema change breaks compatibility: where (a JSON path into the data) and why."""

    path: str
    message: str
    rule: str = ""
    version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Stable keys for ``--json`` output and DLQ ``errors``."""
        return asdict(self)


def child_path(path: str, name: str) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; names that are not identifiers are quoted: ``$['first name']``."""
    if _IDENTIFIER_RE.fullmatch(name):
        return f"{path}.{name}"
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"{path}['{escaped}']"


def can_read(
    reader: Any,
    writer: Any,
    *,
    reader_label: str = "the reader schema",
    writer_label: str = "the writer schema",
    forbid_removed_properties: bool = False,
) -> list[Violation]:
    """Every reason some document valid under ``writer`` would be rejected by ``reader`` (empty: it can read all)."""
    checker = _Checker(reader, writer, reader_label, writer_label, forbid_removed_properties)
    return _unique(checker.check(reader, writer, "$", 0))


def check_against(
    new: Any, existing: Iterable[tuple[int, Any]], mode: CompatibilityMode, *, new_label: str = "the new schema"
) -> list[Violation]:
    """The violations of ``new`` under ``mode`` against each ``(version, schema)`` in ``existing``."""
    violations: list[Violation] = []
    if mode is CompatibilityMode.NONE:
        return violations
    for version, old in existing:
        old_label = f"version {version}"
        found: list[Violation] = []
        if mode.checks_backward:
            found += can_read(
                new,
                old,
                reader_label=new_label,
                writer_label=old_label,
                forbid_removed_properties=mode is CompatibilityMode.ADDITIVE,
            )
        if mode.checks_forward:
            found += can_read(old, new, reader_label=old_label, writer_label=new_label)
        seen: set[tuple[str, str]] = set()
        for v in found:  # FULL: a change both directions object to is reported once, as BACKWARD sees it.
            if (v.path, v.rule) not in seen:
                seen.add((v.path, v.rule))
                violations.append(Violation(v.path, v.message, v.rule, version))
    return _unique(violations)


def _unique(violations: Sequence[Violation]) -> list[Violation]:
    seen: set[Violation] = set()
    result = []
    for violation in violations:
        if violation not in seen:
            seen.add(violation)
            result.append(violation)
    return result


def _describe(types: Iterable[str]) -> str:
    ordered = sorted(types)
    return ordered[0] if len(ordered) == 1 else "[" + ", ".join(ordered) + "]"


def _show(value: Any) -> str:
    return canonical_json(value).decode()


def _types(schema: dict[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    if isinstance(declared, str):
        return {declared}
    return {t for t in declared if isinstance(t, str)}


def _accepts_type(reader_types: set[str], writer_type: str) -> bool:
    return writer_type in reader_types or (writer_type == "integer" and "number" in reader_types)


def _overlap(one: set[str], other: set[str]) -> bool:
    """Whether some value has a type in both sets (integers are numbers too)."""
    if one & other:
        return True
    return ("integer" in one and "number" in other) or ("number" in one and "integer" in other)


def _enum_values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    values = schema.get("enum")
    return list(values) if isinstance(values, list) else None


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Fold ``allOf`` parts into one schema: properties and required are unioned, other keywords taken as found."""
    parts = schema.get("allOf")
    if not isinstance(parts, list):
        return schema
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        part = _merge_all_of(part)
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged.setdefault(key, value)
    return merged


class _Checker:
    def __init__(
        self, reader_root: Any, writer_root: Any, reader_label: str, writer_label: str, forbid_removed: bool
    ) -> None:
        self.reader_root = reader_root
        self.writer_root = writer_root
        self.r = reader_label
        self.w = writer_label
        self.forbid_removed = forbid_removed

    # -- schema plumbing ------------------------------------------------------------------------------------------

    def _resolve(self, schema: Any, root: Any) -> Any:
        """Follow local ``$ref`` pointers (``#/$defs/x``); siblings of ``$ref`` override the target's keywords."""
        for _ in range(_MAX_REF_DEPTH):
            if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
                break
            target = _pointer(root, schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            if not isinstance(target, dict):
                return rest
            schema = {**target, **rest}
        return _merge_all_of(schema) if isinstance(schema, dict) else schema

    def _violation(self, path: str, rule: str, message: str) -> Violation:
        return Violation(path=path, message=message, rule=rule)

    # -- the check ------------------------------------------------------------------------------------------------

    def check(self, reader: Any, writer: Any, path: str, depth: int) -> list[Violation]:
        if depth > 64:  # A recursive schema: what was compared so far is all that can be said.
            return []
        reader = self._resolve(reader, self.reader_root)
        writer = self._resolve(writer, self.writer_root)
        if writer is False:
            return []  # The writer admits nothing, so there is nothing to read.
        if reader is False:
            return [self._violation(path, "rejects_all", f"{self.r} accepts nothing here, {self.w} does")]
        if not isinstance(reader, dict) or reader is True:
            return []
        if not isinstance(writer, dict):
            writer = {}

        writer_branches = writer.get("anyOf", writer.get("oneOf"))
        if isinstance(writer_branches, list):
            base = {k: v for k, v in writer.items() if k not in ("anyOf", "oneOf")}
            found: list[Violation] = []
            for branch in writer_branches:
                branch = self._resolve(branch, self.writer_root)
                if isinstance(branch, dict):
                    found += self.check(reader, {**base, **branch}, path, depth + 1)
            return _unique(found)
        reader_branches = reader.get("anyOf", reader.get("oneOf"))
        if isinstance(reader_branches, list):
            base = {k: v for k, v in reader.items() if k not in ("anyOf", "oneOf")}
            best: list[Violation] | None = None
            for branch in reader_branches:
                branch = self._resolve(branch, self.reader_root)
                if not isinstance(branch, dict):
                    continue
                found = self.check({**base, **branch}, writer, path, depth + 1)
                if not found:
                    return []
                if best is None or len(found) < len(best):
                    best = found
            return best or []

        violations: list[Violation] = []
        effective = self._check_types(reader, writer, path, violations)
        self._check_enum(reader, writer, path, violations)
        if effective is None or "string" in effective:
            self._check_string(reader, writer, path, violations)
        if effective is None or effective & {"number", "integer"}:
            self._check_number(reader, writer, path, violations)
        if effective is None or "array" in effective:
            self._check_array(reader, writer, path, depth, violations)
        if effective is None or "object" in effective:
            self._check_object(reader, writer, path, depth, violations)
        return violations

    def _check_types(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str, out: list[Violation]
    ) -> set[str] | None:
        """Report type narrowing; return the types both accept (None: unconstrained)."""
        reader_types = _types(reader)
        writer_types = _types(writer)
        if reader_types is None:
            return writer_types
        if writer_types is None:
            out.append(
                self._violation(
                    path, "type_narrowed", f"{self.r} only accepts {_describe(reader_types)}, {self.w} any type"
                )
            )
            return reader_types
        missing = {t for t in writer_types if not _accepts_type(reader_types, t)}
        if not missing:
            return writer_types
        reader_values = reader_types - {"null"}
        writer_values = writer_types - {"null"}
        if writer_values and reader_values and not _overlap(reader_values, writer_values):
            out.append(
                self._violation(
                    path,
                    "type_changed",
                    f"type changed: {self.w} has {_describe(writer_types)}, {self.r} has {_describe(reader_types)}",
                )
            )
        elif missing == {"null"}:
            out.append(self._violation(path, "null_not_allowed", f"{self.r} does not accept null, {self.w} does"))
        else:
            out.append(
                self._violation(
                    path,
                    "type_narrowed",
                    f"{self.r} does not accept {_describe(missing)} "
                    f"({self.w} has {_describe(writer_types)}, {self.r} has {_describe(reader_types)})",
                )
            )
        return writer_types - missing

    def _check_enum(self, reader: dict[str, Any], writer: dict[str, Any], path: str, out: list[Violation]) -> None:
        reader_values = _enum_values(reader)
        if reader_values is None:
            return
        writer_values = _enum_values(writer)
        allowed = {canonical_json(v) for v in reader_values}
        if writer_values is None:
            if _types(writer) == {"boolean"} and {b"true", b"false"} <= allowed:
                return
            out.append(
                self._violation(
                    path, "enum_narrowed", f"{self.r} only accepts {_show(reader_values)}, {self.w} any value"
                )
            )
            return
        extra = [v for v in writer_values if canonical_json(v) not in allowed]
        if extra:
            out.append(
                self._violation(
                    path, "enum_narrowed", f"{self.r} does not accept {_show(extra)}, which {self.w} allows"
                )
            )

    def _check_string(self, reader: dict[str, Any], writer: dict[str, Any], path: str, out: list[Violation]) -> None:
        reader_format, writer_format = reader.get("format"), writer.get("format")
        if reader_format and reader_format != writer_format:
            had = f"format '{writer_format}'" if writer_format else "no format"
            out.append(
                self._violation(
                    path, "format_changed", f"{self.r} requires format '{reader_format}', {self.w} has {had}"
                )
            )
        reader_pattern, writer_pattern = reader.get("pattern"), writer.get("pattern")
        if reader_pattern and reader_pattern != writer_pattern:
            had = f"pattern '{writer_pattern}'" if writer_pattern else "no pattern"
            out.append(
                self._violation(
                    path, "pattern_changed", f"{self.r} requires pattern '{reader_pattern}', {self.w} has {had}"
                )
            )
        self._check_bound(reader, writer, path, "maxLength", upper=True, out=out)
        self._check_bound(reader, writer, path, "minLength", upper=False, out=out)

    def _check_number(self, reader: dict[str, Any], writer: dict[str, Any], path: str, out: list[Violation]) -> None:
        for keyword, upper in (("maximum", True), ("exclusiveMaximum", True), ("minimum", False)):
            self._check_bound(reader, writer, path, keyword, upper=upper, out=out)
        self._check_bound(reader, writer, path, "exclusiveMinimum", upper=False, out=out)
        reader_step, writer_step = reader.get("multipleOf"), writer.get("multipleOf")
        if isinstance(reader_step, int | float) and reader_step:
            ok = isinstance(writer_step, int | float) and writer_step and (writer_step / reader_step).is_integer()
            if not ok:
                out.append(
                    self._violation(
                        path,
                        "multiple_of_narrowed",
                        f"{self.r} requires multiples of {reader_step}, {self.w} "
                        + (f"multiples of {writer_step}" if writer_step else "any number"),
                    )
                )

    def _check_bound(
        self,
        reader: dict[str, Any],
        writer: dict[str, Any],
        path: str,
        keyword: str,
        *,
        upper: bool,
        out: list[Violation],
    ) -> None:
        reader_bound, writer_bound = reader.get(keyword), writer.get(keyword)
        if not isinstance(reader_bound, int | float) or isinstance(reader_bound, bool):
            return
        if isinstance(writer_bound, int | float) and not isinstance(writer_bound, bool):
            tighter = reader_bound < writer_bound if upper else reader_bound > writer_bound
            if not tighter:
                return
            had = f"{keyword} {writer_bound}"
        else:
            had = f"no {keyword}"
        out.append(
            self._violation(
                path,
                f"{keyword}_narrowed",
                f"{keyword} narrowed: {self.r} has {keyword} {reader_bound}, {self.w} {had}",
            )
        )

    def _check_array(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str, depth: int, out: list[Violation]
    ) -> None:
        reader_items, writer_items = reader.get("items"), writer.get("items")
        reader_prefix = reader.get("prefixItems", reader_items if isinstance(reader_items, list) else None)
        writer_prefix = writer.get("prefixItems", writer_items if isinstance(writer_items, list) else None)
        if isinstance(reader_prefix, list):
            for index, item in enumerate(reader_prefix):
                other = writer_prefix[index] if isinstance(writer_prefix, list) and index < len(writer_prefix) else {}
                out += self.check(item, other if other is not None else {}, f"{path}[{index}]", depth + 1)
        if reader_items is not None and not isinstance(reader_items, list):
            other = writer_items if writer_items is not None and not isinstance(writer_items, list) else {}
            out += self.check(reader_items, other, f"{path}[*]", depth + 1)
        self._check_bound(reader, writer, path, "maxItems", upper=True, out=out)
        self._check_bound(reader, writer, path, "minItems", upper=False, out=out)
        if reader.get("uniqueItems") is True and writer.get("uniqueItems") is not True:
            out.append(
                self._violation(path, "unique_items_added", f"{self.r} requires unique items, {self.w} does not")
            )

    def _check_object(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str, depth: int, out: list[Violation]
    ) -> None:
        reader_props: dict[str, Any] = reader.get("properties") or {}
        writer_props: dict[str, Any] = writer.get("properties") or {}
        reader_required = set(reader.get("required") or [])
        writer_required = set(writer.get("required") or [])
        reader_extra = reader.get("additionalProperties", True)
        writer_extra = writer.get("additionalProperties", True)
        reader_patterns: dict[str, Any] = reader.get("patternProperties") or {}

        for name in sorted(reader_required - writer_required):
            out.append(
                self._violation(
                    child_path(path, name),
                    "required_added",
                    f"{self.r} requires '{name}', {self.w} does not"
                    + ("" if name in writer_props or writer_extra is not False else " (it does not even declare it)"),
                )
            )
        for name in sorted(writer_props.keys() | reader_props.keys()):
            where = child_path(path, name)
            if name in reader_props and name in writer_props:
                out += self.check(reader_props[name], writer_props[name], where, depth + 1)
            elif name in writer_props:
                if self.forbid_removed:
                    out.append(
                        self._violation(
                            where,
                            "property_removed",
                            f"property '{name}' removed: {self.w} declares it, {self.r} does not",
                        )
                    )
                    continue
                pattern = next((p for p in reader_patterns if _search(p, name)), None)
                if pattern is not None:
                    out += self.check(reader_patterns[pattern], writer_props[name], where, depth + 1)
                elif reader_extra is False:
                    out.append(
                        self._violation(
                            where,
                            "property_not_allowed",
                            f"{self.r} does not allow '{name}' (additionalProperties: false), {self.w} declares it",
                        )
                    )
                elif isinstance(reader_extra, dict):
                    out += self.check(reader_extra, writer_props[name], where, depth + 1)
            elif isinstance(writer_extra, dict):
                # The writer may send this name with any value its additionalProperties schema admits.
                out += self.check(reader_props[name], writer_extra, where, depth + 1)
        if reader_extra is False and writer_extra is not False:
            out.append(
                self._violation(
                    path,
                    "additional_properties_closed",
                    f"{self.r} forbids undeclared properties (additionalProperties: false), {self.w} allows them",
                )
            )
        elif isinstance(reader_extra, dict) and writer_extra is not False:
            out += self.check(
                reader_extra, writer_extra if isinstance(writer_extra, dict) else {}, f"{path}.*", depth + 1
            )


def _search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _pointer(root: Any, ref: str) -> Any:
    """The target of a local JSON pointer ``#/a/b`` in ``root`` (None when it is not local or not found)."""
    if not ref.startswith("#"):
        return None
    node = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
