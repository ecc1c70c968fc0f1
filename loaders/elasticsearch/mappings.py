"""Explicit index mappings from a processed table's Arrow schema, and the documents its rows become.

Strings are ``keyword`` where they identify or classify (the key, ids, emails, phones, codes, statuses) and ``text``
with a ``keyword`` subfield elsewhere (names, free text: searchable by words, sortable and aggregatable exactly).
Decimals are ``scaled_float`` (money: exact to the decimal's scale, stored as a long) and travel as strings, so the
document's ``_source`` keeps every digit. Structs are objects, lists of structs ``nested`` (each element's fields stay
together in a query), maps ``flattened`` (``flat_object`` on OpenSearch): any keys, one field. Mappings are
``dynamic: strict``: a document with a field the schema does not have is rejected, never mapped by guess.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pyarrow as pa

#: String columns whose name says they identify or classify: exact values, never analysed.
KEYWORD_SUFFIXES = ("id", "_ids", "_key", "_code", "_type", "_status", "_hash", "_currency", "_country", "_provider")
KEYWORD_WORDS = ("email", "phone", "currency", "country", "status", "type", "source", "provider", "tenant")
#: The largest scale kept as scaled_float: value x 10^scale must fit a long (9.2e18), so 9 leaves 9.2e9 of range.
MAX_SCALED_FLOAT_SCALE = 9
IGNORE_ABOVE = 256  # Keyword subfields of text: longer values are searchable as text but not kept as one term.


def is_keyword(name: str, key: Sequence[str]) -> bool:
    """Whether a string column holds identifiers or codes (``keyword``) rather than text."""
    lowered = name.lower()
    return name in key or lowered.endswith(KEYWORD_SUFFIXES) or any(word in lowered for word in KEYWORD_WORDS)


def field_mapping(name: str, arrow_type: pa.DataType, key: Sequence[str], *, opensearch: bool) -> dict[str, Any]:
    """The mapping of one field."""
    import pyarrow as pa
    import pyarrow.types as t

    if t.is_string(arrow_type) or t.is_large_string(arrow_type):
        if is_keyword(name, key):
            return {"type": "keyword"}
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": IGNORE_ABOVE}}}
    if t.is_boolean(arrow_type):
        return {"type": "boolean"}
    if t.is_int8(arrow_type):
        return {"type": "byte"}
    if t.is_int16(arrow_type) or t.is_uint8(arrow_type):
        return {"type": "short"}
    if t.is_int32(arrow_type) or t.is_uint16(arrow_type):
        return {"type": "integer"}
    if t.is_integer(arrow_type):
        return {"type": "long"}
    if t.is_float16(arrow_type) or t.is_float32(arrow_type):
        return {"type": "float"}
    if t.is_floating(arrow_type):
        return {"type": "double"}
    if t.is_decimal(arrow_type):
        assert isinstance(arrow_type, pa.Decimal128Type | pa.Decimal256Type)
        if arrow_type.scale > MAX_SCALED_FLOAT_SCALE:
            return {"type": "double"}
        return {"type": "scaled_float", "scaling_factor": 10 ** max(arrow_type.scale, 0)}
    if t.is_timestamp(arrow_type) or t.is_date(arrow_type):
        return {"type": "date"}
    if t.is_time(arrow_type):
        return {"type": "keyword"}  # A time of day has no date type; ISO text sorts correctly.
    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type) or t.is_fixed_size_binary(arrow_type):
        return {"type": "binary"}
    if t.is_struct(arrow_type):
        assert isinstance(arrow_type, pa.StructType)
        return {"type": "object", "properties": properties(list(arrow_type), (), opensearch=opensearch)}
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_fixed_size_list(arrow_type):
        item = arrow_type.value_type  # type: ignore[attr-defined]
        inner = field_mapping(name, item, key, opensearch=opensearch)
        if t.is_struct(item):
            return {**inner, "type": "nested"}  # Each element's fields match together, not across elements.
        return inner  # Every field is multi-valued: a list of strings is a keyword field with several values.
    if t.is_map(arrow_type):
        return {"type": "flat_object" if opensearch else "flattened"}
    return {"type": "object", "enabled": False}  # Kept in _source, not indexed.


def properties(fields: Sequence[pa.Field], key: Sequence[str], *, opensearch: bool) -> dict[str, Any]:
    """The ``properties`` of an object of ``fields``."""
    return {field.name: field_mapping(field.name, field.type, key, opensearch=opensearch) for field in fields}


def index_mappings(
    schema: pa.Schema,
    key: Sequence[str],
    *,
    opensearch: bool,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An index's mappings: strict, every field explicit; ``overrides`` replace the derived mapping of a column."""
    derived = properties(list(schema), key, opensearch=opensearch)
    unknown = sorted(set(overrides or {}) - set(derived))
    if unknown:
        raise ValueError(f"field_mappings name columns the table does not have: {', '.join(unknown)}")
    return {"dynamic": "strict", "properties": {**derived, **{name: dict(m) for name, m in (overrides or {}).items()}}}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # Exact digits in _source; the scaled_float field indexes the number.
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot write {type(value).__name__} to a search document")


def _maps_as_objects(value: Any) -> Any:
    """Arrow's maps come as lists of (key, value) pairs: JSON objects instead."""
    if isinstance(value, list):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):
            return {str(k): _maps_as_objects(v) for k, v in value}
        return [_maps_as_objects(item) for item in value]
    if isinstance(value, dict):
        return {k: _maps_as_objects(v) for k, v in value.items()}
    return value


def has_maps(schema: pa.Schema) -> bool:
    """Whether any field is or holds a map (its values need converting to JSON objects)."""
    return "map<" in str(schema)


def document_bytes(row: Mapping[str, Any], *, convert_maps: bool) -> bytes:
    """One row as a search document (JSON): dates in ISO 8601, decimals as exact strings, binaries in base64."""
    source = {name: _maps_as_objects(value) for name, value in row.items()} if convert_maps else row
    return orjson.dumps(source, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def document_id(row: Mapping[str, Any], key: Sequence[str]) -> str:
    """The document ``_id``: the key's value, or a JSON array of the values for a key of several columns."""
    if len(key) == 1:
        return str(row[key[0]])
    return orjson.dumps([row[name] for name in key], default=_json_default).decode()
