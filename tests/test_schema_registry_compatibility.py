"""The compatibility checker on a table of schema pairs per mode: what passes, and the paths that explain what not."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from schema_registry import CompatibilityMode, can_read, check_against, fingerprint, normalize_schema

BASE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "age": {"type": "integer"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "status": {"type": "string", "enum": ["active", "closed"]},
        "created": {"type": "string", "format": "date-time"},
    },
    "required": ["id"],
}


def edit(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    change(schema)
    return schema


def props(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["properties"]  # type: ignore[no-any-return]


add_optional = edit(lambda s: props(s).update(phone={"type": ["string", "null"]}))
add_required = edit(lambda s: (props(s).update(phone={"type": "string"}), s["required"].append("phone")))
make_required = edit(lambda s: s["required"].append("email"))
remove_optional = edit(lambda s: props(s).pop("age"))
remove_required = edit(lambda s: (props(s).pop("id"), s.pop("required")))
remove_nested = edit(lambda s: props(s)["address"]["properties"].pop("zip"))
drop_null = edit(lambda s: props(s)["email"].update(type="string"))
change_type = edit(lambda s: props(s)["age"].update(type="string"))
widen_number = edit(lambda s: props(s)["age"].update(type="number"))
add_null = edit(lambda s: props(s)["id"].update(type=["string", "null"]))
narrow_items = edit(lambda s: props(s)["tags"]["items"].update(type="integer"))
narrow_enum = edit(lambda s: props(s)["status"].update(enum=["active"]))
widen_enum = edit(lambda s: props(s)["status"].update(enum=["active", "closed", "paused"]))
change_format = edit(lambda s: props(s)["created"].update(format="date"))
drop_format = edit(lambda s: props(s)["created"].pop("format"))
close_model = edit(lambda s: s.update(additionalProperties=False))
nested_type = edit(lambda s: props(s)["address"]["properties"]["city"].update(type="integer"))
annotated = edit(
    lambda s: (s.update(title="Customer", description="A customer"), props(s)["id"].update(description="Stripe id"))
)

A = CompatibilityMode.ADDITIVE
B = CompatibilityMode.BACKWARD
F = CompatibilityMode.FORWARD
FULL = CompatibilityMode.FULL
N = CompatibilityMode.NONE

CASES = [
    # (mode, new schema, expected violation paths; [] means compatible)
    pytest.param(A, add_optional, [], id="additive-add-optional-property"),
    pytest.param(A, annotated, [], id="additive-annotations-only"),
    pytest.param(A, widen_number, [], id="additive-widen-integer-to-number"),
    pytest.param(A, add_null, [], id="additive-make-nullable"),
    pytest.param(A, widen_enum, [], id="additive-widen-enum"),
    pytest.param(A, drop_format, [], id="additive-drop-format"),
    pytest.param(A, add_required, ["$.phone"], id="additive-add-required-property"),
    pytest.param(A, make_required, ["$.email"], id="additive-make-optional-required"),
    pytest.param(A, remove_optional, ["$.age"], id="additive-remove-property"),
    pytest.param(A, remove_nested, ["$.address.zip"], id="additive-remove-nested-property"),
    pytest.param(A, drop_null, ["$.email"], id="additive-drop-null"),
    pytest.param(A, change_type, ["$.age"], id="additive-change-type"),
    pytest.param(A, nested_type, ["$.address.city"], id="additive-change-nested-type"),
    pytest.param(A, narrow_items, ["$.tags[*]"], id="additive-narrow-array-items"),
    pytest.param(A, narrow_enum, ["$.status"], id="additive-narrow-enum"),
    pytest.param(A, change_format, ["$.created"], id="additive-change-format"),
    pytest.param(A, close_model, ["$"], id="additive-close-content-model"),
    pytest.param(B, add_optional, [], id="backward-add-optional-property"),
    pytest.param(B, remove_optional, [], id="backward-remove-optional-property"),
    pytest.param(B, widen_number, [], id="backward-widen-type"),
    pytest.param(B, add_required, ["$.phone"], id="backward-add-required-property"),
    pytest.param(B, drop_null, ["$.email"], id="backward-drop-null"),
    pytest.param(B, narrow_enum, ["$.status"], id="backward-narrow-enum"),
    pytest.param(F, add_optional, [], id="forward-add-optional-property"),
    pytest.param(F, add_required, [], id="forward-add-required-property"),
    pytest.param(F, narrow_enum, [], id="forward-narrow-enum"),
    pytest.param(F, drop_null, [], id="forward-drop-null"),
    pytest.param(F, widen_number, ["$.age"], id="forward-widen-type"),
    pytest.param(F, widen_enum, ["$.status"], id="forward-widen-enum"),
    pytest.param(F, remove_required, ["$.id"], id="forward-remove-required-property"),
    pytest.param(F, drop_format, ["$.created"], id="forward-drop-format"),
    pytest.param(FULL, add_optional, [], id="full-add-optional-property"),
    pytest.param(FULL, remove_optional, [], id="full-remove-optional-property"),
    pytest.param(FULL, widen_number, ["$.age"], id="full-widen-type"),
    pytest.param(FULL, drop_null, ["$.email"], id="full-drop-null"),
    pytest.param(FULL, add_required, ["$.phone"], id="full-add-required-property"),
    pytest.param(N, change_type, [], id="none-change-type"),
    pytest.param(N, remove_required, [], id="none-remove-required-property"),
]


@pytest.mark.parametrize(("mode", "new", "paths"), CASES)
def test_compatibility_table(mode: CompatibilityMode, new: dict[str, Any], paths: list[str]) -> None:
    violations = check_against(new, [(1, BASE)], mode)
    assert sorted(v.path for v in violations) == sorted(paths)
    assert all(v.message and v.version == 1 for v in violations)


TRANSITIVE_HISTORY = [
    (1, {"type": "object", "properties": {"id": {"type": "string"}, "x": {"type": "integer"}}}),
    (2, {"type": "object", "properties": {"id": {"type": "string"}}}),
]
REINTRODUCED = {"type": "object", "properties": {"id": {"type": "string"}, "x": {"type": "string"}}}


@pytest.mark.parametrize("mode", [B, F, FULL])
def test_non_transitive_modes_check_only_the_latest_version(mode: CompatibilityMode) -> None:
    assert check_against(REINTRODUCED, TRANSITIVE_HISTORY[-1:], mode) == []


@pytest.mark.parametrize(
    "mode",
    [
        CompatibilityMode.BACKWARD_TRANSITIVE,
        CompatibilityMode.FORWARD_TRANSITIVE,
        CompatibilityMode.FULL_TRANSITIVE,
    ],
)
def test_transitive_modes_check_every_version(mode: CompatibilityMode) -> None:
    violations = check_against(REINTRODUCED, TRANSITIVE_HISTORY, mode)
    assert {(v.path, v.version) for v in violations} == {("$.x", 1)}


def test_violation_messages_name_both_schemas_and_the_types() -> None:
    [violation] = check_against(change_type, [(3, BASE)], A)
    assert violation.rule == "type_changed"
    assert violation.message == "type changed: version 3 has integer, the new schema has string"


def test_removed_property_message_says_which_version_declared_it() -> None:
    [violation] = check_against(remove_optional, [(2, BASE)], A)
    assert violation.rule == "property_removed"
    assert "version 2 declares it" in violation.message


def test_property_names_that_are_not_identifiers_are_quoted_in_paths() -> None:
    old = {"type": "object", "properties": {"first name": {"type": "string"}}}
    new = {"type": "object", "properties": {"first name": {"type": "integer"}}}
    assert [v.path for v in check_against(new, [(1, old)], A)] == ["$['first name']"]


def test_objects_inside_arrays_are_checked_by_item_path() -> None:
    old = {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}}
    new = {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "integer"}}}}
    assert [v.path for v in can_read(new, old)] == ["$[*].sku"]


def test_any_of_reader_accepts_a_writer_matching_one_branch() -> None:
    reader = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]}
    assert can_read(reader, {"type": "integer"}) == []
    assert [v.rule for v in can_read(reader, {"type": "boolean"})] == ["type_changed"]


def test_any_of_writer_needs_every_branch_readable() -> None:
    writer = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert [v.rule for v in can_read({"type": "string"}, writer)] == ["null_not_allowed"]


def test_local_refs_are_followed() -> None:
    defs = {"$defs": {"money": {"type": "integer"}}}
    old = {**defs, "type": "object", "properties": {"amount": {"$ref": "#/$defs/money"}}}
    new = {
        "$defs": {"money": {"type": "string"}},
        "type": "object",
        "properties": {"amount": {"$ref": "#/$defs/money"}},
    }
    assert [v.path for v in check_against(new, [(1, old)], A)] == ["$.amount"]


def test_additional_properties_schema_reads_properties_the_reader_does_not_declare() -> None:
    reader = {"type": "object", "additionalProperties": {"type": "string"}}
    writer = {"type": "object", "properties": {"note": {"type": "integer"}}, "additionalProperties": False}
    assert [v.path for v in can_read(reader, writer)] == ["$.note"]


def test_tighter_string_length_and_number_range_are_narrowing() -> None:
    old = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 10}, "n": {"type": "number"}}}
    new = {
        "type": "object",
        "properties": {"code": {"type": "string", "maxLength": 5}, "n": {"type": "number", "minimum": 0}},
    }
    assert sorted(v.rule for v in check_against(new, [(1, old)], B)) == ["maxLength_narrowed", "minimum_narrowed"]


def test_normalize_ignores_annotations_and_order_but_keeps_properties_named_like_annotations() -> None:
    one = {"type": ["null", "string"], "title": "x", "required": ["b", "a"]}
    two = {"required": ["a", "b"], "type": ["string", "null"], "description": "y"}
    assert fingerprint(one) == fingerprint(two)
    with_description_property = {"type": "object", "properties": {"description": {"type": "string"}}}
    assert normalize_schema(with_description_property) == with_description_property


def test_full_mode_reports_a_change_both_directions_reject_once() -> None:
    violations = check_against(change_type, [(1, BASE)], FULL)
    assert [(v.path, v.rule) for v in violations] == [("$.age", "type_changed")]


def test_forward_widening_says_the_old_schema_cannot_read_the_new_type() -> None:
    [violation] = check_against(widen_number, [(1, BASE)], F)
    assert violation.rule == "type_narrowed"
    assert violation.message.startswith("version 1 does not accept number")


def test_enum_losing_null_is_reported_even_when_the_type_allows_null() -> None:
    old = {"type": ["string", "null"], "enum": ["a", None]}
    new = {"type": ["string", "null"], "enum": ["a"]}
    assert [v.rule for v in check_against(new, [(1, old)], B)] == ["enum_narrowed"]
