"""Explicit Spark schemas for the raw zone, derived from the registry's JSON Schemas (never inferred from the data).

Every registered version of a subject is merged, so batches written under any version read with one schema. The
mapping, JSON Schema -> Spark:

=====================================  ==========================================================================
``string``                             string; ``format: date-time`` -> timestamp (UTC), ``format: date`` -> date
``integer``                            long
``number``                             decimal(38, 9): exact for money and counts; a value beyond 29 integer
                                       digits does not fit and the row lands in ``_cdp_corrupt_record``
``boolean``                            boolean
``object`` with ``properties``         struct of those properties (undeclared keys are not read)
``object`` without ``properties``      string holding the JSON text (free-form objects, maps)
``array``                              array of its ``items`` (array of string when ``items`` is absent)
several types, ``anyOf``/``oneOf``     the widest of them: integer+number -> decimal, date+date-time -> timestamp,
                                       struct+struct -> merged struct, anything else -> string (the JSON text)
=====================================  ==========================================================================

``null`` only makes a column nullable (every column is). ``$ref`` to the same document and ``allOf`` are followed.
Beside the record's own columns every raw row carries the target's metadata (``_sdc_*``, ``_cdp_schema_version``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from pyspark.sql.types import DataType, StructField, StructType

    from schema_registry import SchemaRegistry

#: Rows that do not parse against the schema keep their text here (Spark's PERMISSIVE mode); null for good rows.
CORRUPT_RECORD_COLUMN = "_cdp_corrupt_record"
#: The raw-zone key of the batch a row came from.
SOURCE_FILE_COLUMN = "_cdp_source_file"


class RawSchemaError(CdpError):
    """A subject has no registered schema to read its raw batches with."""


def metadata_fields() -> list[StructField]:
    """The columns target-s3raw adds to every record (``plugins.core.raw_zone.METADATA_COLUMNS``)."""
    from pyspark.sql.types import LongType, StructField, TimestampType

    return [
        StructField("_sdc_extracted_at", TimestampType()),
        StructField("_sdc_received_at", TimestampType()),
        StructField("_sdc_batched_at", TimestampType()),
        StructField("_sdc_sequence", LongType()),
        StructField("_cdp_schema_version", LongType()),
    ]


def spark_type(schema: Any, root: Mapping[str, Any] | None = None, expanding: frozenset[str] = frozenset()) -> DataType:
    """The Spark type of one JSON Schema (``root`` is the document its ``$ref``s point into).

    ``expanding`` holds the references being expanded: one that refers back to itself (a tree) ends as JSON text.
    """
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        DateType,
        DecimalType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    root = root if root is not None else schema
    if not isinstance(schema, Mapping):
        return StringType()  # `true` and the like: any JSON, kept as its text.
    if isinstance(ref := schema.get("$ref"), str):
        if ref in expanding:
            return StringType()
        return spark_type(_resolve(ref, root), root, expanding | {ref})
    if isinstance(parts := schema.get("allOf"), list) and parts:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            resolved = _resolve(part["$ref"], root) if isinstance(part, Mapping) and "$ref" in part else part
            if isinstance(resolved, Mapping):
                merged = _merge_all_of(merged, resolved)
        return spark_type(merged, root, expanding)
    for keyword in ("anyOf", "oneOf"):
        if isinstance(branches := schema.get(keyword), list) and branches:
            useful = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
            types = [spark_type(branch, root, expanding) for branch in useful]
            return _widest(types) if types else StringType()
    kinds = _declared_types(schema)
    if not kinds:
        return StringType()
    if len(kinds) > 1:
        return _widest(spark_type({**schema, "type": kind}, root, expanding) for kind in kinds)
    kind = kinds[0]
    if kind == "string":
        fmt = schema.get("format")
        return TimestampType() if fmt == "date-time" else DateType() if fmt == "date" else StringType()
    if kind == "integer":
        return LongType()
    if kind == "number":
        return DecimalType(38, 9)
    if kind == "boolean":
        return BooleanType()
    if kind == "array":
        items = schema.get("items")
        return ArrayType(spark_type(items, root, expanding) if isinstance(items, Mapping) else StringType())
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return StringType()  # A free-form object: its JSON text.
    return StructType([StructField(name, spark_type(sub, root, expanding)) for name, sub in properties.items()])


def _declared_types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if declared is None:
        if "properties" in schema:
            return ["object"]
        if "items" in schema:
            return ["array"]
        return []
    kinds = [declared] if isinstance(declared, str) else list(declared)
    return [kind for kind in dict.fromkeys(kinds) if kind != "null"]


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#"):
        return {}  # Remote references are not followed: the value is kept as JSON text.
    found: Any = root
    for part in ref.lstrip("#").strip("/").split("/") if ref not in ("#", "#/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(found, Mapping) or part not in found:
            return {}
        found = found[part]
    return found


def _merge_all_of(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(left)
    for key, value in right.items():
        if key == "properties" and isinstance(value, Mapping):
            merged["properties"] = {**merged.get("properties", {}), **value}
        elif key not in merged:
            merged[key] = value
    return merged


def merge_types(left: DataType, right: DataType) -> DataType:
    """The type that reads values of both: see the module's table."""
    from pyspark.sql.types import ArrayType, DateType, DecimalType, LongType, StringType, StructType, TimestampType

    if left == right:
        return left
    if isinstance(left, StructType) and isinstance(right, StructType):
        return merge_structs([left, right])
    if isinstance(left, ArrayType) and isinstance(right, ArrayType):
        return ArrayType(merge_types(left.elementType, right.elementType))
    pair = {type(left), type(right)}
    if pair <= {LongType, DecimalType}:
        return DecimalType(38, 9)
    if pair <= {DateType, TimestampType}:
        return TimestampType()
    return StringType()


def _widest(types: Iterable[DataType]) -> DataType:
    result: DataType | None = None
    for found in types:
        result = found if result is None else merge_types(result, found)
    assert result is not None
    return result


def merge_structs(structs: Iterable[StructType]) -> StructType:
    """The union of the structs' fields, in order of first appearance, each field's types merged."""
    from pyspark.sql.types import StructField, StructType

    fields: dict[str, DataType] = {}
    for struct in structs:
        for field in struct.fields:
            fields[field.name] = (
                merge_types(fields[field.name], field.dataType) if field.name in fields else field.dataType
            )
    return StructType([StructField(name, kind) for name, kind in fields.items()])


def record_struct(schemas: Iterable[Mapping[str, Any]]) -> StructType:
    """The struct that reads records written under any of ``schemas``, plus the raw metadata columns."""
    from pyspark.sql.types import StructType

    structs = []
    for schema in schemas:
        found = spark_type(schema)
        structs.append(found if isinstance(found, StructType) else StructType())
    metadata = metadata_fields()
    names = {field.name for field in metadata}
    own = [field for field in merge_structs(structs).fields if field.name not in names]
    return StructType([*own, *metadata])


def subject_struct(registry: SchemaRegistry, tenant: str, provider: str, stream: str) -> StructType:
    """The read schema of a raw subject: every registered version merged, plus the metadata columns."""
    from schema_registry import subject_name

    subject = subject_name(tenant, provider, stream)
    versions = registry.all_versions(subject)
    if not versions:
        raise RawSchemaError(
            f"subject '{subject}' has no registered schema; run its tap into target-s3raw first "
            "or register one with 'cdp schema register'"
        )
    return record_struct(version.schema for version in versions)
