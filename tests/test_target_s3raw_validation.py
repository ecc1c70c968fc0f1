"""plugins/core/validation.py: the compiled validator agrees with the reference jsonschema and reports every error.

The one known difference: stock python-jsonschema checks ``multipleOf`` in float arithmetic (19.99 is "not a multiple"
of 0.01 there); the validator keeps jsonschema-rs's exact verdict, on its fast path and on its fallback alike.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from plugins.core.dead_letters import FieldError
from plugins.core.validation import InvalidRecordSchemaError, RecordValidator, json_path

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "created"],
    "properties": {
        "id": {"type": "string", "minLength": 3},
        "created": {"type": "integer"},
        "amount": {"type": ["number", "null"], "minimum": 0},
        "status": {"enum": ["active", "closed"]},
        "email": {"type": "string", "format": "email"},
        "updated_at": {"type": ["string", "null"], "format": "date-time"},
        "address": {
            "type": ["object", "null"],
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city"],
        },
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "lines": {
            "type": "array",
            "items": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}},
        },
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "agent:type": {"type": "string"},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "price": {"type": "number", "multipleOf": 0.01},
    },
}

RECORDS = [
    {"id": "cus_1", "created": 1},
    {"id": "cus_1", "created": 1, "amount": 9.99, "status": "active", "tags": ["a", "b"], "either": 3},
    {"id": "cus_1", "created": 1, "email": "not an email", "updated_at": "yesterday"},  # formats are not checked
    {"id": "cus_1", "created": 1, "address": {"city": "Lyon", "zip": "69001"}, "lines": [{"sku": "x", "qty": 2}]},
    {"id": "cus_1", "created": 1, "metadata": {"a": "b"}, "agent:type": "desktop", "undeclared": {"deep": 1}},
    {"id": "cu", "created": 1},
    {"created": "1"},
    {"id": 5, "created": 1.5, "amount": -1},
    {"id": "cus_1", "created": 1, "status": "paused", "tags": ["a", "b", "c", "d"]},
    {"id": "cus_1", "created": 1, "address": {"zip": "6900"}, "lines": [{"sku": 1, "qty": "2"}, "x"]},
    {"id": "cus_1", "created": 1, "metadata": {"a": 1}, "agent:type": 2, "either": 1.5},
    {"id": "cus_1", "created": 12345678901234567890123},
    {"id": "cus_1", "created": True},
    {"id": "cus_1", "created": 1, "price": 19.99},
    {"id": "cus_1", "created": 1, "price": 19.995},
    {"id": "cus_1", "created": 12345678901234567890123, "price": 19.99},
    [],
    "a string",
]


def _exact_multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Any:
    """The reference's multipleOf in exact decimal arithmetic (see the module docstring)."""
    if validator.is_type(instance, "number") and Decimal(str(instance)) % Decimal(str(divisor)) != 0:
        yield jsonschema.ValidationError(f"{instance} is not a multiple of {divisor}")


@pytest.mark.parametrize("record", RECORDS, ids=range(len(RECORDS)))
def test_verdict_and_error_paths_match_the_reference_jsonschema(record: Any) -> None:
    exact = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"multipleOf": _exact_multiple_of})
    reference = exact(SCHEMA)
    expected_paths = sorted(json_path(list(e.absolute_path)) for e in reference.iter_errors(record))
    validator = RecordValidator.for_schema(SCHEMA)

    assert validator.is_valid(record) is reference.is_valid(record)
    assert sorted(e.path for e in validator.errors(record)) == expected_paths


def test_every_error_of_a_record_is_reported_with_its_json_path() -> None:
    errors = RecordValidator.for_schema(SCHEMA).errors({"id": 5, "created": "x", "agent:type": 1, "tags": [1]})

    assert [e.path for e in errors] == ["$.created", "$.id", "$.tags[0]", "$['agent:type']"]
    assert all(isinstance(e, FieldError) and e.message for e in errors)


def test_validator_is_compiled_once_per_schema_content() -> None:
    first = RecordValidator.for_schema(SCHEMA)
    same_content = RecordValidator.for_schema(dict(reversed(list(SCHEMA.items()))))

    assert first is same_content
    assert RecordValidator.for_schema({**SCHEMA, "required": ["id"]}) is not first


def test_undeclared_properties_are_listed_by_path_including_nested_and_array_items() -> None:
    validator = RecordValidator.for_schema(SCHEMA)
    record = {
        "id": "cus_1",
        "created": 1,
        "plan": "pro",
        "address": {"city": "Lyon", "geo": [1, 2]},
        "lines": [{"sku": "a", "discount": 1}],
        "metadata": {"anything": "goes"},
    }

    assert validator.undeclared(record) == ["$.plan", "$.address.geo", "$.lines[*].discount"]
    assert validator.undeclared({"id": "cus_1", "created": 1}) == []
    assert validator.undeclared({"id": "c", "_sdc_sequence": 1}, ignore=frozenset({"_sdc_sequence"})) == []


def test_an_invalid_schema_is_refused_with_its_location() -> None:
    with pytest.raises(InvalidRecordSchemaError, match=r"\$.properties.id"):
        RecordValidator.for_schema({"type": "object", "properties": {"id": {"type": "text"}}})


@pytest.mark.parametrize("record", [{"price": 19.99}, {"price": 19.99, "big": 2**70}], ids=["fast", "fallback"])
def test_decimal_multiple_of_keeps_the_exact_verdict_where_stock_jsonschema_differs(record: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"price": {"multipleOf": 0.01}, "big": {"type": "integer"}}}
    validator = RecordValidator.for_schema(schema)

    assert validator.is_valid(record)
    assert validator.errors(record) == []
    assert not validator.is_valid({**record, "price": 19.995})
    assert not jsonschema.Draft202012Validator(schema).is_valid({"price": 19.99})  # the documented difference


def test_an_object_with_empty_properties_is_free_form_unless_closed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {}},
            "closed": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }
    validator = RecordValidator.for_schema(schema)

    assert validator.undeclared({"metadata": {"anything": 1}}) == []
    assert validator.undeclared({"closed": {}, "extra": 1}) == ["$.extra"]
