"""The segment model: a named audience over unified customers, defined by criteria in nested AND/OR groups.

A definition is data (``segments/*.yml`` in the project, or ``cdp segment create``); the engines compile it
(:mod:`activators.segments.compile_sql` for PostgreSQL, :mod:`activators.segments.compile_spark` for the lake), always
passing values as parameters. This module holds the types every part shares; ``parse_segment`` turns a YAML mapping
into them and ``check_segment`` checks them against the fields a tenant's tables have.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from activators.segments.fields import FieldCatalog, SegmentField


class SegmentDefinitionError(CdpError):
    """A segment definition that cannot be used: an unknown field, an operator that does not fit its type, a value of
    the wrong type, a bad cron. The message names the segment and the offending part, in one line."""


class SegmentType(StrEnum):
    """Static segments keep the members frozen at creation; dynamic ones refresh (on their cron or when asked)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


class Logic(StrEnum):
    """How a group combines its criteria (YAML accepts either case: ``AND``, ``and``)."""

    AND = "and"
    OR = "or"


class Operator(StrEnum):
    """A condition's comparison. ``value`` is a scalar, except: ``in``/``not_in`` a non-empty list, ``between`` a
    two-item list ``[low, high]`` (both inclusive), ``exists`` a boolean (true: the field is not null, for a list not
    empty), ``within_last`` a positive whole number of days (a timestamp in the last N days up to now)."""

    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    CONTAINS = "contains"  # text: substring, case-insensitive; list: holds the value
    GT = "gt"
    LT = "lt"
    GTE = "gte"
    LTE = "lte"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"
    BETWEEN = "between"
    WITHIN_LAST = "within_last"


class FieldType(StrEnum):
    """What a field holds, which decides the operators and values it takes."""

    TEXT = "text"
    NUMBER = "number"  # integers and decimals
    TIMESTAMP = "timestamp"  # UTC; values as ISO 8601 text
    BOOLEAN = "boolean"
    TEXT_LIST = "text_list"  # e.g. customers.emails, customers.sources
    CUSTOM = "custom"  # a key of customers.custom_fields (JSON): compared as text, or as a number when the value is one


OPERATORS_BY_TYPE: Mapping[FieldType, frozenset[Operator]] = {
    FieldType.TEXT: frozenset(
        {Operator.EQUALS, Operator.NOT_EQUALS, Operator.CONTAINS, Operator.IN, Operator.NOT_IN, Operator.EXISTS}
    ),
    FieldType.NUMBER: frozenset(
        {
            Operator.EQUALS,
            Operator.NOT_EQUALS,
            Operator.GT,
            Operator.LT,
            Operator.GTE,
            Operator.LTE,
            Operator.IN,
            Operator.NOT_IN,
            Operator.EXISTS,
            Operator.BETWEEN,
        }
    ),
    FieldType.TIMESTAMP: frozenset(
        {
            Operator.EQUALS,
            Operator.NOT_EQUALS,
            Operator.GT,
            Operator.LT,
            Operator.GTE,
            Operator.LTE,
            Operator.EXISTS,
            Operator.BETWEEN,
            Operator.WITHIN_LAST,
        }
    ),
    FieldType.BOOLEAN: frozenset({Operator.EQUALS, Operator.NOT_EQUALS, Operator.EXISTS}),
    FieldType.TEXT_LIST: frozenset({Operator.CONTAINS, Operator.EXISTS}),
    FieldType.CUSTOM: frozenset(Operator) - {Operator.WITHIN_LAST},
}


@dataclass(frozen=True)
class Condition:
    """``{field, operator, value}``: a column of ``customers`` or ``customer_metrics``, or ``custom.KEY``."""

    field: str
    operator: Operator
    value: Any = None


@dataclass(frozen=True)
class EventCondition:
    """Behaviour: events of ``event_type`` (``customer_events``, optionally whose ``properties`` all match the event's
    payload), counted per customer over the last ``within_days`` days (all time when None), at least ``min_count``
    and at most ``max_count`` times. ``min_count=0`` with ``max_count=0`` means "never did"."""

    event_type: str
    min_count: int = 1
    max_count: int | None = None
    within_days: int | None = None
    properties: Mapping[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """Criteria combined by ``logic``; a criterion may itself be a group. An empty AND group matches everyone."""

    logic: Logic
    criteria: tuple[Criterion, ...]


Criterion = Condition | EventCondition | Group


@dataclass(frozen=True)
class Segment:
    """A segment definition: what ``segments/NAME.yml`` holds.

    ``name`` is its id (lower case letters, digits, ``_`` and ``-``; at most 63 characters). ``currency`` is the ISO
    4217 code the money metrics (``lifetime_value``, ``average_order_value``) are read in; a segment that uses one
    must set it. The other metrics combine a customer's rows across currencies (``order_count`` summed,
    ``first_order_at`` the earliest, ``last_order_at`` the latest, ``days_since_last_order`` the least,
    ``events_90d`` and ``engagement_score`` the greatest).
    """

    name: str
    criteria: Group
    type: SegmentType = SegmentType.DYNAMIC
    description: str = ""
    refresh_frequency: str | None = None  # cron, five fields, UTC
    currency: str | None = None


#: How deep groups may nest under the root group; deeper definitions are refused (and would be unreadable).
MAX_DEPTH = 10
#: The longest window (days) ``within_last`` and ``within_days`` take: a century, far within PostgreSQL's intervals.
MAX_DAYS = 36_500
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SEGMENT_KEYS = frozenset({"name", "description", "type", "refresh_frequency", "currency", "logic", "criteria"})
_CONDITION_KEYS = frozenset({"field", "operator", "value"})
_EVENT_KEYS = frozenset({"event", "min_count", "max_count", "within_days", "properties"})
_GROUP_KEYS = frozenset({"logic", "criteria"})


def _shown(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: its repr, on one line, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def definition_error(name: str, source: str, path: str, problem: str) -> SegmentDefinitionError:
    """``segment 'NAME' (FILE): PATH: PROBLEM`` as one SegmentDefinitionError (the file and path when known)."""
    where = f" ({source})" if source else ""
    at = f"{path}: " if path else ""
    line = f"segment {_shown(name)}{where}: {at}{problem}"
    return SegmentDefinitionError(" ".join(line.splitlines()))


class _Problem(Exception):
    """A problem at a path inside a definition; parse_segment turns it into a SegmentDefinitionError."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def is_number(value: Any) -> bool:
    """A real number (int or finite float), never a boolean (YAML's ``true`` is not 1 here)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp with an offset or ``Z`` as an aware datetime; None for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    if not isinstance(value, str) or ("T" not in value.upper() and " " not in value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _check_text(path: str, value: str) -> None:
    if "\x00" in value:
        raise _Problem(path, "a NUL character cannot be stored or compared; remove it")


def _scalar(path: str, value: Any) -> Any:
    """A criterion's scalar: text, a number or a boolean; a YAML timestamp becomes ISO text (aware only)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise _Problem(path, f"timestamp {value.isoformat()} has no offset; add one, e.g. 'Z' for UTC")
        return value.isoformat()
    if isinstance(value, date):
        raise _Problem(path, f"{value.isoformat()} is a date; write a timestamp with an offset, e.g. {value}T00:00:00Z")
    if isinstance(value, str):
        _check_text(path, value)
        return value
    if isinstance(value, bool) or is_number(value):
        return value
    if isinstance(value, float):
        raise _Problem(path, f"{value} is not a finite number")
    raise _Problem(path, f"{_shown(value)} is not text, a number or a boolean")


def _ordered(path: str, low: Any, high: Any) -> None:
    """``between``'s bounds: both numbers, both timestamps or both text, and low <= high."""
    low_time, high_time = parse_timestamp(low), parse_timestamp(high)
    if is_number(low) and is_number(high):
        in_order = low <= high
    elif low_time is not None and high_time is not None:
        in_order = low_time <= high_time
    elif isinstance(low, str) and isinstance(high, str):
        in_order = low <= high
    else:
        raise _Problem(path, f"between needs two numbers, two timestamps or two texts, not {_shown([low, high])}")
    if not in_order:
        raise _Problem(path, f"between's low bound {_shown(low)} is above its high bound {_shown(high)}")


def _operator_value(path: str, operator: Operator, value: Any) -> Any:
    """The value's shape for its operator (which the field's type refines in check_segment)."""
    if operator in (Operator.IN, Operator.NOT_IN):
        if not isinstance(value, list) or not value:
            raise _Problem(path, f"operator '{operator}' needs a non-empty list, not {_shown(value)}")
        items = [_scalar(f"{path}[{index}]", item) for index, item in enumerate(value)]
        if any(isinstance(item, bool) for item in items):
            raise _Problem(path, f"operator '{operator}' takes texts or numbers, not booleans")
        if not (all(isinstance(item, str) for item in items) or all(is_number(item) for item in items)):
            raise _Problem(path, f"operator '{operator}' needs a list of one type (all texts or all numbers)")
        return items
    if operator is Operator.BETWEEN:
        if not isinstance(value, list) or len(value) != 2:
            raise _Problem(path, f"operator 'between' needs [low, high], not {_shown(value)}")
        low, high = (_scalar(f"{path}[{index}]", item) for index, item in enumerate(value))
        _ordered(path, low, high)
        return [low, high]
    if operator is Operator.EXISTS:
        if not isinstance(value, bool):
            raise _Problem(path, f"operator 'exists' needs true or false, not {_shown(value)}")
        return value
    if operator is Operator.WITHIN_LAST:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DAYS:
            raise _Problem(
                path, f"operator 'within_last' needs a whole number of days 1..{MAX_DAYS}, not {_shown(value)}"
            )
        return value
    if isinstance(value, list | dict) or value is None:
        raise _Problem(path, f"operator '{operator}' needs one value, not {_shown(value)}")
    return _scalar(path, value)


def _mapping(path: str, data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _Problem(path, f"{what} must be a mapping, not {_shown(data)}")
    return data


def _unknown_keys(path: str, data: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise _Problem(
            path, f"unknown key {', '.join(map(repr, unknown))} in {what} (allowed: {', '.join(sorted(allowed))})"
        )


def _logic(path: str, value: Any) -> Logic:
    if not isinstance(value, str) or value.lower() not in {item.value for item in Logic}:
        raise _Problem(path, f"logic must be 'and' or 'or', not {_shown(value)}")
    return Logic(value.lower())


def _count(path: str, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Problem(path, f"{what} must be a whole number >= 0, not {_shown(value)}")
    return value


def _condition(path: str, data: Mapping[str, Any]) -> Condition:
    _unknown_keys(path, data, _CONDITION_KEYS, "a condition")
    name = data.get("field")
    if not isinstance(name, str) or not name:
        raise _Problem(path, f"field must be a field's name, not {_shown(name)}")
    _check_text(path, name)
    operator = data.get("operator")
    if not isinstance(operator, str) or operator not in {item.value for item in Operator}:
        known = ", ".join(item.value for item in Operator)
        raise _Problem(path, f"unknown operator {_shown(operator)} (operators: {known})")
    if "value" not in data:
        raise _Problem(path, f"operator '{operator}' needs a value")
    return Condition(name, Operator(operator), _operator_value(path, Operator(operator), data["value"]))


def _event(path: str, data: Mapping[str, Any]) -> EventCondition:
    _unknown_keys(path, data, _EVENT_KEYS, "an event criterion (it takes no field, operator or value)")
    event_type = data["event"]
    if not isinstance(event_type, str) or not event_type:
        raise _Problem(path, f"event must be an event type's name, not {_shown(event_type)}")
    _check_text(path, event_type)
    min_count = _count(path, data.get("min_count", 1), "min_count")
    max_count = None if data.get("max_count") is None else _count(path, data["max_count"], "max_count")
    if max_count is not None and max_count < min_count:
        raise _Problem(path, f"max_count {max_count} is below min_count {min_count}")
    within_days = data.get("within_days")
    if within_days is not None and (
        isinstance(within_days, bool) or not isinstance(within_days, int) or not 0 < within_days <= MAX_DAYS
    ):
        raise _Problem(path, f"within_days must be a whole number of days 1..{MAX_DAYS}, not {_shown(within_days)}")
    properties = _mapping(path, {} if data.get("properties") is None else data["properties"], "properties")
    matched: dict[str, str | int | float | bool] = {}
    for key, value in properties.items():
        if not isinstance(key, str) or not key:
            raise _Problem(f"{path}.properties", f"property names must be text, not {_shown(key)}")
        _check_text(f"{path}.properties", key)
        scalar = _scalar(f"{path}.properties.{key}", value)
        matched[key] = scalar
    return EventCondition(event_type, min_count, max_count, within_days, matched)


def _group(path: str, data: Mapping[str, Any], depth: int) -> Group:
    if depth > MAX_DEPTH:
        raise _Problem(path, f"groups nest deeper than {MAX_DEPTH} levels; flatten the definition")
    criteria = data.get("criteria")
    if criteria is None:
        criteria = []
    if not isinstance(criteria, list):
        raise _Problem(path or "criteria", f"criteria must be a list, not {_shown(criteria)}")
    parsed: list[Criterion] = []
    for index, item in enumerate(criteria):
        here = f"{path}.criteria[{index}]" if path else f"criteria[{index}]"
        item = _mapping(here, item, "a criterion")
        if "event" in item:
            parsed.append(_event(here, item))
        elif "criteria" in item:
            _unknown_keys(here, item, _GROUP_KEYS, "a group")
            parsed.append(_group(here, item, depth + 1))
        elif "field" in item:
            parsed.append(_condition(here, item))
        else:
            raise _Problem(here, "a criterion needs 'field' (a condition), 'event' (behaviour) or 'criteria' (a group)")
    logic = _logic(f"{path}.logic" if path else "logic", data.get("logic", "and"))
    return Group(logic, tuple(parsed))


def _cron(value: Any) -> str | None:
    from croniter import croniter

    if value is None:
        return None
    if not isinstance(value, str) or len(value.split()) != 5 or not croniter.is_valid(value):
        raise _Problem("refresh_frequency", f"{_shown(value)} is not a five-field cron expression (e.g. '0 * * * *')")
    return " ".join(value.split())


def _currency(value: Any) -> str | None:
    import pycountry

    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not re.fullmatch(r"[A-Z]{3}", value)
        or pycountry.currencies.get(alpha_3=value) is None
    ):
        raise _Problem("currency", f"{_shown(value)} is not an ISO 4217 currency code (e.g. EUR)")
    return value


def parse_segment(data: Mapping[str, Any], *, source: str = "") -> Segment:
    """A segment from its YAML mapping, strictly: unknown keys, wrong types, a bad name or cron are refused with a
    SegmentDefinitionError naming ``source`` (the file) and the offending part, in one line."""
    raw_name = data.get("name") if isinstance(data, Mapping) else None
    name = raw_name if isinstance(raw_name, str) else "?"
    try:
        data = _mapping("", data, "a segment definition")
        _unknown_keys("", data, _SEGMENT_KEYS, "the segment")
        if not isinstance(raw_name, str) or not _NAME_RE.fullmatch(raw_name):
            raise _Problem(
                "name", "a name is lower-case letters, digits, '_' and '-', at most 63, e.g. 'high-value-eu'"
            )
        description = data.get("description") or ""
        if not isinstance(description, str):
            raise _Problem("description", f"must be text, not {_shown(description)}")
        _check_text("description", description)
        kind = data.get("type", SegmentType.DYNAMIC.value)
        if not isinstance(kind, str) or kind.lower() not in {item.value for item in SegmentType}:
            raise _Problem("type", f"must be 'dynamic' or 'static', not {_shown(kind)}")
        frequency = _cron(data.get("refresh_frequency"))
        if frequency is not None and kind.lower() == SegmentType.STATIC:
            raise _Problem("refresh_frequency", "a static segment keeps the members it was created with; remove it")
        criteria = _group("", data, 1)
        return Segment(
            name=raw_name,
            criteria=criteria,
            type=SegmentType(kind.lower()),
            description=description,
            refresh_frequency=frequency,
            currency=_currency(data.get("currency")),
        )
    except _Problem as problem:
        raise definition_error(name, source, problem.path, problem.problem) from None


def _criterion_to_mapping(criterion: Criterion) -> dict[str, Any]:
    if isinstance(criterion, Condition):
        return {"field": criterion.field, "operator": criterion.operator.value, "value": criterion.value}
    if isinstance(criterion, EventCondition):
        mapping: dict[str, Any] = {"event": criterion.event_type, "min_count": criterion.min_count}
        if criterion.max_count is not None:
            mapping["max_count"] = criterion.max_count
        if criterion.within_days is not None:
            mapping["within_days"] = criterion.within_days
        if criterion.properties:
            mapping["properties"] = dict(criterion.properties)
        return mapping
    return {"logic": criterion.logic.value, "criteria": [_criterion_to_mapping(item) for item in criterion.criteria]}


def segment_to_mapping(segment: Segment) -> dict[str, Any]:
    """The YAML mapping of ``segment`` (JSON-able: stored as jsonb, printed by ``show``); parse_segment's inverse."""
    mapping: dict[str, Any] = {"name": segment.name}
    if segment.description:
        mapping["description"] = segment.description
    mapping["type"] = segment.type.value
    if segment.refresh_frequency is not None:
        mapping["refresh_frequency"] = segment.refresh_frequency
    if segment.currency is not None:
        mapping["currency"] = segment.currency
    mapping["logic"] = segment.criteria.logic.value
    mapping["criteria"] = [_criterion_to_mapping(item) for item in segment.criteria.criteria]
    return mapping


_EXPECTED = {
    FieldType.TEXT: "text",
    FieldType.TEXT_LIST: "text",
    FieldType.NUMBER: "a number",
    FieldType.TIMESTAMP: "an ISO 8601 timestamp with an offset (e.g. 2026-01-31T00:00:00Z)",
    FieldType.BOOLEAN: "true or false",
    FieldType.CUSTOM: "text, a number or a boolean",
}


def _fits(kind: FieldType, operator: Operator, value: Any) -> bool:
    """Whether one value (an item of a list for in/not_in/between) fits a field of type ``kind``."""
    if kind in (FieldType.TEXT, FieldType.TEXT_LIST):
        return isinstance(value, str)
    if kind is FieldType.NUMBER:
        return is_number(value)
    if kind is FieldType.TIMESTAMP:
        return parse_timestamp(value) is not None
    if kind is FieldType.BOOLEAN:
        return isinstance(value, bool)
    if operator is Operator.CONTAINS:
        return isinstance(value, str)
    if isinstance(value, bool):  # a custom field: booleans compare for (in)equality only
        return operator in (Operator.EQUALS, Operator.NOT_EQUALS)
    return isinstance(value, str) or is_number(value)


def _check_condition(segment: Segment, condition: Condition, path: str, catalog: FieldCatalog) -> None:
    try:
        resolved: SegmentField = catalog.resolve(condition.field)
    except SegmentDefinitionError as exc:
        raise _Problem(path, str(exc)) from None
    kind, operator = resolved.type, condition.operator
    if not isinstance(operator, Operator) or operator not in OPERATORS_BY_TYPE[kind]:
        raise _Problem(path, f"operator '{operator}' does not fit {kind.value} field '{resolved.name}'")
    value = _operator_value(path, operator, condition.value)
    if operator not in (Operator.EXISTS, Operator.WITHIN_LAST):
        items = value if operator in (Operator.IN, Operator.NOT_IN, Operator.BETWEEN) else [value]
        for item in items:
            if not _fits(kind, operator, item):
                raise _Problem(
                    path, f"value {_shown(item)} does not fit {kind.value} field '{resolved.name}' ({_EXPECTED[kind]})"
                )
    if resolved.money and segment.currency is None:
        raise _Problem(path, f"'{resolved.name}' is money: set the segment's currency (e.g. currency: EUR)")


def _check_group(segment: Segment, group: Group, path: str, catalog: FieldCatalog, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Problem(path, f"groups nest deeper than {MAX_DEPTH} levels; flatten the definition")
    for index, criterion in enumerate(group.criteria):
        here = f"{path}.criteria[{index}]" if path else f"criteria[{index}]"
        if isinstance(criterion, Group):
            _check_group(segment, criterion, here, catalog, depth + 1)
        elif isinstance(criterion, EventCondition):
            _event(here, _criterion_to_mapping(criterion))  # a criterion built in code gets parse_segment's checks
            if not catalog.events:
                raise _Problem(here, "behaviour needs the customer_events table; run its transform and load it")
        else:
            _check_condition(segment, criterion, here, catalog)


def check_segment(segment: Segment, catalog: FieldCatalog, *, source: str = "") -> None:
    """Check ``segment`` against a tenant's fields: unknown fields, operators not in OPERATORS_BY_TYPE, values of the
    wrong type and money metrics without a currency raise a SegmentDefinitionError (one line, naming the part)."""
    try:
        _check_group(segment, segment.criteria, "", catalog, 1)
    except _Problem as problem:
        raise definition_error(segment.name, source, problem.path, problem.problem) from None
