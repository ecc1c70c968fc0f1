"""A segment compiled to one PostgreSQL statement: the ids of its members, over the tenant's serving tables.

Identifiers come only from the field catalogue, through ``sql.Identifier``; every value from the definition is a
named parameter (``%(p0)s``, ...). The statement:

- reads ``"tenant".customers c``; when a metric is used, joins the per-customer aggregate of ``customer_metrics``
  (a CTE ``m``: money metrics from the row in the segment's currency, the others combined as
  :data:`activators.segments.fields.METRIC_AGGREGATES` says);
- compiles behaviour over ``"tenant".customer_events``: ``EXISTS`` for "at least once", ``NOT EXISTS`` for "never",
  else a per-customer count of the matching events (LEFT JOINed, ``coalesce(n, 0)`` compared); windows as
  ``occurred_at >= now() - make_interval(days => N) AND occurred_at <= now()``;
- reads custom fields as ``c.custom_fields::jsonb -> KEY``: text compares with ``->>``; a number criterion compares
  ``::numeric`` only where ``jsonb_typeof`` says number, so a text value never raises.

Nulls: a null field fails every operator except ``exists: false``, and ``not_equals``/``not_in``, which count null as
"not equal" (a customer with no country is in "country is not DE"). The lake engine follows the same rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg import sql

from activators.segments.fields import (
    CUSTOMERS_TABLE,
    EVENTS_TABLE,
    METRICS_TABLE,
    FieldCatalog,
    FieldSource,
    SegmentField,
)
from activators.segments.model import (
    Condition,
    EventCondition,
    FieldType,
    Group,
    Logic,
    Operator,
    Segment,
    check_segment,
    is_number,
    parse_timestamp,
)

_COMPARISONS = {
    Operator.EQUALS: "=",
    Operator.GT: ">",
    Operator.LT: "<",
    Operator.GTE: ">=",
    Operator.LTE: "<=",
}
_AGGREGATES = {"sum": sql.SQL("sum"), "min": sql.SQL("min"), "max": sql.SQL("max")}


@dataclass(frozen=True)
class CompiledQuery:
    """One statement (``SELECT c.customer_id ...``) and its named parameters."""

    query: sql.Composed
    params: dict[str, Any]


def like_pattern(text: str) -> str:
    """``%text%`` for (I)LIKE, with LIKE's metacharacters (``%``, ``_`` and the escape ``\\``) escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class _Compiler:
    segment: Segment
    tenant: str
    catalog: FieldCatalog
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, SegmentField] = field(default_factory=dict)
    joins: list[sql.Composable] = field(default_factory=list)

    def param(self, value: Any, cast: str | None = None) -> sql.Composable:
        name = f"p{len(self.params)}"
        self.params[name] = value
        placeholder = sql.Placeholder(name)
        return sql.SQL("{}::{}").format(placeholder, sql.SQL(cast)) if cast else placeholder

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.tenant, name)

    # -- criteria ---------------------------------------------------------------------------------------------------

    def group(self, group: Group) -> sql.Composable:
        if not group.criteria:
            return sql.SQL("TRUE" if group.logic is Logic.AND else "FALSE")
        joiner = sql.SQL(" AND " if group.logic is Logic.AND else " OR ")
        parts = [self.criterion(item) for item in group.criteria]
        return sql.SQL("({})").format(joiner.join(parts))

    def criterion(self, criterion: Condition | EventCondition | Group) -> sql.Composable:
        if isinstance(criterion, Group):
            return self.group(criterion)
        if isinstance(criterion, EventCondition):
            return self.event(criterion)
        return self.condition(criterion)

    def event(self, event: EventCondition) -> sql.Composable:
        """Behaviour: ``EXISTS`` for "at least once", ``NOT EXISTS`` for "never" (both planned as semi/anti joins);
        other counts from a per-customer count of the matching events, LEFT JOINed (one pass over the events, where a
        correlated count would scan them once per customer)."""
        filters: list[sql.Composable] = [sql.SQL("e.type = {}").format(self.param(event.event_type))]
        if event.within_days is not None:
            days = self.param(event.within_days, "integer")
            filters.append(sql.SQL("e.occurred_at >= now() - make_interval(days => {})").format(days))
            filters.append(sql.SQL("e.occurred_at <= now()"))
        if event.properties:
            matched = self.param(json.dumps(dict(event.properties), ensure_ascii=False), "jsonb")
            filters.append(sql.SQL("e.properties::jsonb @> {}").format(matched))
        if event.min_count == 0 and event.max_count is None:
            return sql.SQL("TRUE")
        exists = event.min_count == 1 and event.max_count is None
        if exists or (event.min_count == 0 and event.max_count == 0):
            correlated = sql.SQL(" AND ").join([sql.SQL("e.customer_id = c.customer_id"), *filters])
            test = sql.SQL("EXISTS (SELECT 1 FROM {} e WHERE {})").format(self.table(EVENTS_TABLE), correlated)
            return test if exists else sql.SQL("NOT {}").format(test)
        alias = sql.Identifier(f"b{len(self.joins)}")
        self.joins.append(
            sql.SQL(
                " LEFT JOIN (SELECT e.customer_id, count(*) AS n FROM {} e WHERE {} GROUP BY e.customer_id) {}"
                " ON {}.customer_id = c.customer_id"
            ).format(self.table(EVENTS_TABLE), sql.SQL(" AND ").join(filters), alias, alias)
        )
        count = sql.SQL("coalesce({}.n, 0)").format(alias)
        if event.max_count is None:
            return sql.SQL("{} >= {}").format(count, self.param(event.min_count))
        return sql.SQL("{} BETWEEN {} AND {}").format(count, self.param(event.min_count), self.param(event.max_count))

    def column(self, resolved: SegmentField) -> sql.Composable:
        if resolved.source is FieldSource.METRICS:
            self.metrics[resolved.column] = resolved
            return sql.SQL("m.{}").format(sql.Identifier(resolved.column))
        return sql.SQL("c.{}").format(sql.Identifier(resolved.column))

    def condition(self, condition: Condition) -> sql.Composable:
        resolved = self.catalog.resolve(condition.field)
        if resolved.type is FieldType.CUSTOM:
            return self.custom(resolved, condition)
        column = self.column(resolved)
        operator, value = condition.operator, condition.value
        if resolved.type is FieldType.NUMBER:
            value = _numbers(value)
        elif resolved.type is FieldType.TIMESTAMP and operator is not Operator.WITHIN_LAST:
            value = _timestamps(value)
        if resolved.type is FieldType.TEXT_LIST:
            if operator is Operator.EXISTS:
                test = sql.SQL("coalesce(cardinality({}), 0) > 0").format(column)
                return test if value else sql.SQL("NOT {}").format(test)
            return sql.SQL("{} = ANY({})").format(self.param(value), column)  # contains: holds the value
        if operator is Operator.CONTAINS:
            return sql.SQL("{} ILIKE {}").format(column, self.param(like_pattern(value)))
        if operator is Operator.WITHIN_LAST:
            days = self.param(value, "integer")
            return sql.SQL("({0} >= now() - make_interval(days => {1}) AND {0} <= now())").format(column, days)
        return self.compare(column, operator, value)

    def compare(
        self, column: sql.Composable, operator: Operator, value: Any, cast: str | None = None
    ) -> sql.Composable:
        """``column OPERATOR value`` with the null rules (see the module's docstring)."""
        if operator in _COMPARISONS:
            return sql.SQL("{} {} {}").format(column, sql.SQL(_COMPARISONS[operator]), self.param(value, cast))
        if operator is Operator.NOT_EQUALS:
            return sql.SQL("{} IS DISTINCT FROM {}").format(column, self.param(value, cast))
        array = f"{cast}[]" if cast else None
        if operator is Operator.IN:
            return sql.SQL("{} = ANY({})").format(column, self.param(value, array))
        if operator is Operator.NOT_IN:
            return sql.SQL("({0} IS NULL OR NOT ({0} = ANY({1})))").format(column, self.param(value, array))
        if operator is Operator.EXISTS:
            return sql.SQL("{} IS NOT NULL" if value else "{} IS NULL").format(column)
        if operator is Operator.BETWEEN:
            low, high = value
            return sql.SQL("{} BETWEEN {} AND {}").format(column, self.param(low, cast), self.param(high, cast))
        raise AssertionError(f"operator {operator} reached compare()")  # check_segment refuses it first

    def custom(self, resolved: SegmentField, condition: Condition) -> sql.Composable:
        """A custom field: ``custom_fields::jsonb -> key``, compared as text, as a number, or as a boolean."""
        operator, value = condition.operator, condition.value
        key = self.param(resolved.key, "text")
        json_value = sql.SQL("(c.{}::jsonb -> {})").format(sql.Identifier(resolved.column), key)
        text_value = sql.SQL("(c.{}::jsonb ->> {})").format(sql.Identifier(resolved.column), key)
        if operator is Operator.EXISTS:
            return sql.SQL("{} IS NOT NULL" if value else "{} IS NULL").format(text_value)
        if operator is Operator.CONTAINS:  # a JSON list holds the text; any other value holds it as a substring
            return sql.SQL(
                "(CASE WHEN jsonb_typeof({0}) = 'array' THEN {0} @> jsonb_build_array({1}) ELSE {2} ILIKE {3} END)"
            ).format(json_value, self.param(value, "text"), text_value, self.param(like_pattern(value)))
        sample = value[0] if isinstance(value, list) else value
        if isinstance(sample, bool):
            typed = sql.SQL("(CASE WHEN jsonb_typeof({0}) = 'boolean' THEN {0}::boolean END)").format(json_value)
            return self.compare(typed, operator, value, "boolean")
        if is_number(sample):
            typed = sql.SQL("(CASE WHEN jsonb_typeof({0}) = 'number' THEN {0}::numeric END)").format(json_value)
            return self.compare(typed, operator, _numbers(value), "numeric")
        # Text order is by code point ("C" collation), as Python's and Spark's string comparisons are.
        collated = sql.SQL('({} COLLATE "C")').format(text_value)
        return self.compare(collated, operator, value, "text")

    # -- the statement ----------------------------------------------------------------------------------------------

    def metrics_cte(self) -> sql.Composable:
        columns: list[sql.Composable] = [sql.SQL("customer_id")]
        for name, metric in sorted(self.metrics.items()):
            column = sql.Identifier(name)
            if metric.money:
                currency = self.param(self.segment.currency, "text")
                columns.append(sql.SQL("max({0}) FILTER (WHERE currency = {1}) AS {0}").format(column, currency))
            else:
                columns.append(sql.SQL("{0}({1}) AS {1}").format(_AGGREGATES[metric.aggregate], column))
        return sql.SQL("WITH m AS (SELECT {} FROM {} GROUP BY customer_id) ").format(
            sql.SQL(", ").join(columns), self.table(METRICS_TABLE)
        )

    def compile(self) -> CompiledQuery:
        where = self.group(self.segment.criteria)
        prefix: sql.Composable = sql.SQL("")
        joins = list(self.joins)
        if self.metrics:
            prefix = self.metrics_cte()
            joins.insert(0, sql.SQL(" LEFT JOIN m ON m.customer_id = c.customer_id"))
        join = sql.Composed(joins)
        query = sql.SQL("{}SELECT c.customer_id FROM {} c{} WHERE {}").format(
            prefix, self.table(CUSTOMERS_TABLE), join, where
        )
        return CompiledQuery(query=sql.Composed([query]), params=self.params)


def _numbers(value: Any) -> Any:
    """Numbers as Decimal (exact against numeric columns); lists item by item."""
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return Decimal(str(value)) if is_number(value) else value


def _timestamps(value: Any) -> Any:
    if isinstance(value, list):
        return [_timestamps(item) for item in value]
    parsed = parse_timestamp(value)
    return parsed if parsed is not None else value


def members_query(segment: Segment, tenant: str, catalog: FieldCatalog) -> CompiledQuery:
    """The statement selecting the ids of ``segment``'s members in ``tenant`` (checked against ``catalog`` first:
    a SegmentDefinitionError for anything that does not fit; a MissingTableError when there is no customers table)."""
    catalog.require_customers()
    check_segment(segment, catalog)
    return _Compiler(segment, tenant, catalog).compile()
