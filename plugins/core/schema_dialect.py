"""One JSON Schema dialect end to end: Draft 2020-12, as singer-sdk uses.

Every schema is read through ``to_dialect`` before anything compiles, compares or stores it (the registry, the
record validator, drift detection, compatibility checks, DLQ reprocess), so all of them judge a record the same way:

- a schema that declares ``$schema`` is read in that draft (4, 6, 7, 2019-09 or 2020-12);
- a schema without ``$schema`` is read as 2020-12, unless it uses forms only older drafts have: boolean
  ``exclusiveMaximum``/``exclusiveMinimum`` (Draft 4, as singer-io taps emit) or array-form ``items`` (Draft 7);
- older drafts are rewritten into their 2020-12 equivalent (``exclusiveMaximum: true`` + ``maximum`` becomes a
  numeric ``exclusiveMaximum``, array ``items`` becomes ``prefixItems``, ``dependencies`` splits into
  ``dependentRequired``/``dependentSchemas``, keywords beside a Draft 4-7 ``$ref`` are dropped because those drafts
  ignore them) and the result declares ``"$schema"`` explicitly.

``$ref`` is resolved only inside the schema: nothing is fetched over the network or read from a file. A reference
that the schema itself cannot satisfy is an ``UnresolvableReferenceError``.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import jsonschema_rs

from plugins.core.errors import CdpError

DIALECT = "https://json-schema.org/draft/2020-12/schema"
DRAFT4 = "http://json-schema.org/draft-04/schema#"
DRAFT6 = "http://json-schema.org/draft-06/schema#"
DRAFT7 = "http://json-schema.org/draft-07/schema#"
DRAFT2019 = "https://json-schema.org/draft/2019-09/schema"
_KNOWN = {uri.rstrip("#").replace("https://", "http://"): uri for uri in (DRAFT4, DRAFT6, DRAFT7, DRAFT2019, DIALECT)}
_REF_SIBLINGS_KEPT = frozenset({"$ref", "definitions", "$defs", "title", "description", "$comment"})

# Keywords whose value is one subschema (or, for items/additionalItems in older drafts, a list), a map of
# name -> subschema, or a list of subschemas. The registry's normal form walks the same ones.
SUBSCHEMA_KEYWORDS = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "contentSchema",
    }
)
SUBSCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
SUBSCHEMA_LIST_KEYWORDS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_MAX_DEPTH = 256


class SchemaDialectError(CdpError, ValueError):
    """A schema declares a dialect the project does not read, or uses a form it cannot convert."""


class UnresolvableReferenceError(CdpError, ValueError):
    """A ``$ref`` points outside the schema (a URL or file) or at nothing inside it."""


def source_dialect(schema: Mapping[str, Any]) -> str:
    """The draft ``schema`` is written in: its ``$schema``, else detected from Draft 4/7-only forms, else 2020-12."""
    declared = schema.get("$schema")
    if declared is not None:
        key = declared.rstrip("#").replace("https://", "http://") if isinstance(declared, str) else None
        known = _KNOWN.get(key) if key is not None else None
        if known is None:
            raise SchemaDialectError(
                f"$schema {declared!r} is not a dialect target-s3raw reads; use Draft 4, 6, 7, 2019-09 or 2020-12 "
                f"({DIALECT})"
            )
        return known
    legacy = _legacy_forms(schema, 0)
    if "boolean-exclusive" in legacy:
        return DRAFT4
    return DRAFT7 if legacy else DIALECT


def to_dialect(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` in Draft 2020-12 with ``$schema`` declared (a new object; ``schema`` is not modified)."""
    if not isinstance(schema, Mapping):
        raise SchemaDialectError(f"a schema must be a JSON object, not {type(schema).__name__}")
    dialect = source_dialect(schema)
    converted = dict(schema) if dialect == DIALECT else _convert(schema, dialect, 0)
    converted["$schema"] = DIALECT
    return converted


def _refuse_retrieval(uri: str) -> NoReturn:
    raise UnresolvableReferenceError(f"$ref '{uri}' is outside the schema")


def compile_fast(schema: Mapping[str, Any], **options: Any) -> Any:
    """A jsonschema-rs validator of a 2020-12 ``schema`` that never fetches or reads a ``$ref``.

    Raises ``UnresolvableReferenceError`` for a ``$ref`` the schema cannot satisfy, ValueError for an unusable schema.
    """
    try:
        return jsonschema_rs.Draft202012Validator(dict(schema), retriever=_refuse_retrieval, **options)
    except jsonschema_rs.ValidationError as exc:
        first_line = str(exc).split("\n", 1)[0]
        if "is outside the schema" in first_line or "retrieving it failed" in first_line:
            where = first_line.split("'", 2)[1] if first_line.count("'") >= 2 else first_line
            raise UnresolvableReferenceError(
                f"$ref '{where}' points outside the schema; remote and file references are never followed: "
                "put the referenced schema under $defs and refer to it as '#/$defs/NAME'"
            ) from None
        if "Pointer" in first_line or "does not exist" in first_line or "Unresolvable" in first_line:
            raise UnresolvableReferenceError(f"$ref cannot be resolved inside the schema: {first_line}") from None
        raise ValueError(first_line) from None


def reference_validator(schema: Mapping[str, Any], **options: Any) -> Any:
    """python-jsonschema's 2020-12 validator of ``schema``, with a registry that refuses every retrieval.

    ``multipleOf`` is checked in exact decimal arithmetic, as jsonschema-rs does: python-jsonschema's float
    arithmetic says 19.99 is not a multiple of 0.01.
    """
    import referencing
    import referencing.exceptions

    def refuse(uri: str) -> NoReturn:
        raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]

    registry: referencing.Registry[Any] = referencing.Registry(retrieve=refuse)  # type: ignore[call-arg]
    return _exact_reference_class()(schema, registry=registry, **options)


def _multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Iterator[Any]:
    import jsonschema

    if not validator.is_type(instance, "number") or isinstance(divisor, bool):
        return
    try:
        remainder = decimal.Decimal(str(instance)) % decimal.Decimal(str(divisor))
    except (decimal.InvalidOperation, ValueError):  # Beyond decimal's range: python-jsonschema's own answer.
        yield from jsonschema._keywords.multipleOf(validator, divisor, instance, schema)
        return
    if remainder != 0:
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {divisor}")


@functools.cache
def _exact_reference_class() -> Any:
    import jsonschema

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, validators={"multipleOf": _multiple_of})


def check_schema(schema: Mapping[str, Any]) -> Any:
    """The compiled (``compile_fast``) validator of a 2020-12 ``schema``, once it matches its metaschema.

    Raises ``SchemaDialectError`` for a schema its metaschema refuses, ``UnresolvableReferenceError`` for a ``$ref``.
    """
    import jsonschema

    from plugins.core.validation import json_path  # Here: plugins.core.validation imports this module.

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = json_path(list(exc.path))
        raise SchemaDialectError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    return compile_fast(schema, validate_formats=False)


def _legacy_forms(schema: Any, depth: int) -> set[str]:
    """Which Draft 4-7-only forms ``schema`` uses (walking subschemas)."""
    found: set[str] = set()
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return found
    if isinstance(schema.get("exclusiveMaximum"), bool) or isinstance(schema.get("exclusiveMinimum"), bool):
        found.add("boolean-exclusive")
    if isinstance(schema.get("items"), list):
        found.add("array-items")
    for sub in _subschemas(schema):
        found |= _legacy_forms(sub, depth + 1)
    return found


def _subschemas(schema: Mapping[str, Any]) -> list[Any]:
    subs: list[Any] = []
    for key, value in schema.items():
        if key in SUBSCHEMA_KEYWORDS:
            subs.extend(value if isinstance(value, list) else [value])
        elif key in SUBSCHEMA_MAP_KEYWORDS and isinstance(value, Mapping):
            subs.extend(value.values())
        elif key in SUBSCHEMA_LIST_KEYWORDS and isinstance(value, list):
            subs.extend(value)
        elif key == "dependencies" and isinstance(value, Mapping):
            subs.extend(v for v in value.values() if isinstance(v, Mapping | bool))
    return subs


def _convert(schema: Any, dialect: str, depth: int) -> Any:
    """One (sub)schema of ``dialect`` (Draft 4 to 2019-09) rewritten in 2020-12."""
    if not isinstance(schema, Mapping):
        return schema
    if depth > _MAX_DEPTH:
        raise SchemaDialectError(f"schema nested deeper than {_MAX_DEPTH} levels")
    source = dict(schema)
    if "$recursiveRef" in source or "$recursiveAnchor" in source:
        raise SchemaDialectError("$recursiveRef (Draft 2019-09) cannot be read; use $dynamicRef (2020-12)")
    if dialect in (DRAFT4, DRAFT6, DRAFT7) and "$ref" in source:
        # Drafts 4-7 ignore every keyword beside $ref; keep only what other references may point into.
        source = {k: v for k, v in source.items() if k in _REF_SIBLINGS_KEPT}
    result: dict[str, Any] = {}
    for key, value in source.items():
        if key in ("items", "additionalItems"):
            continue  # Below: they change together.
        if key in SUBSCHEMA_KEYWORDS:
            result[key] = _convert(value, dialect, depth + 1)
        elif key in SUBSCHEMA_MAP_KEYWORDS and isinstance(value, Mapping):
            result[key] = {name: _convert(sub, dialect, depth + 1) for name, sub in value.items()}
        elif key in SUBSCHEMA_LIST_KEYWORDS and isinstance(value, list):
            result[key] = [_convert(sub, dialect, depth + 1) for sub in value]
        elif key == "dependencies" and isinstance(value, Mapping):
            for name, dependency in value.items():
                if isinstance(dependency, list):
                    result.setdefault("dependentRequired", {})[name] = dependency
                else:
                    result.setdefault("dependentSchemas", {})[name] = _convert(dependency, dialect, depth + 1)
        elif key == "id" and dialect == DRAFT4 and isinstance(value, str):
            result["$id"] = value
        else:
            result[key] = value
    items = source.get("items")
    if isinstance(items, list):
        result["prefixItems"] = [_convert(sub, dialect, depth + 1) for sub in items]
        if "additionalItems" in source:
            result["items"] = _convert(source["additionalItems"], dialect, depth + 1)
    elif items is not None:
        result["items"] = _convert(items, dialect, depth + 1)  # additionalItems beside a schema is ignored
    if dialect == DRAFT4:
        for exclusive, bound in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
            flag = source.get(exclusive)
            if isinstance(flag, bool):
                del result[exclusive]
                if flag and bound in result:
                    result[exclusive] = result.pop(bound)
    return result
