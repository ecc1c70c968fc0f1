"""The segment model: a named audience over unified customers, defined by criteria in nested AND/OR groups.

A definition is data (``segments/*.yml`` in the project, or ``cdp segment create``); the engines compile it
(:mod:`activators.segments.compile_sql` for PostgreSQL, :mod:`activators.segments.compile_spark` for the lake), always
passing values as parameters. This module holds the types every part shares; ``parse_segment`` turns a YAML mapping
into them and ``check_segment`` checks them against the fields a tenant's tables have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from plugins.core.errors import CdpError


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
