"""Canonical form of a JSON Schema: what two schemas must share to count as the same version.

Annotations (``title``, ``description``, ``examples``, ``$comment``, ``default`` and the other keywords that do not
change which documents validate) are dropped, ``required`` and ``enum`` lose their order and duplicates, a one-item
``type`` list becomes its item, and a ``$schema`` naming the default dialect (Draft 2020-12) is dropped, since a
schema without one is read in that dialect too. Key order never matters: the fingerprint is the SHA-256 of the
canonical JSON with sorted keys. Only keywords in schema positions are touched, so a property called
``description`` is kept.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from plugins.core.schema_dialect import DIALECT, SUBSCHEMA_KEYWORDS, SUBSCHEMA_LIST_KEYWORDS, SUBSCHEMA_MAP_KEYWORDS

ANNOTATION_KEYWORDS = frozenset(
    {"title", "description", "examples", "$comment", "default", "deprecated", "readOnly", "writeOnly"}
)


def canonical_json(value: Any) -> bytes:
    """``value`` as compact JSON with sorted keys: equal values give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def normalize_schema(schema: Any) -> Any:
    """The canonical form of ``schema`` (see the module docstring); the input is not modified."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATION_KEYWORDS or (key == "$schema" and value == DIALECT):
            continue
        if key in SUBSCHEMA_KEYWORDS:
            result[key] = [normalize_schema(v) for v in value] if isinstance(value, list) else normalize_schema(value)
        elif key in SUBSCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            result[key] = {name: normalize_schema(sub) for name, sub in value.items()}
        elif key in SUBSCHEMA_LIST_KEYWORDS and isinstance(value, list):
            result[key] = [normalize_schema(sub) for sub in value]
        elif key == "required" and isinstance(value, list):
            if value:
                result[key] = sorted(set(value))
        elif key == "enum" and isinstance(value, list):
            result[key] = _sorted_unique(value)
        elif key == "type" and isinstance(value, list):
            types = sorted(set(value))
            result[key] = types[0] if len(types) == 1 else types
        else:
            result[key] = value
    return result


def fingerprint(schema: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of the normalized schema."""
    return hashlib.sha256(canonical_json(normalize_schema(schema))).hexdigest()


def _sorted_unique(values: list[Any]) -> list[Any]:
    by_json = {canonical_json(v): v for v in values}
    return [by_json[key] for key in sorted(by_json)]
