"""A segment compiled to a Spark Column filter over the processed zone's Iceberg tables: the lake engine.

The same criteria and the same rules as :mod:`activators.segments.compile_sql` (see its docstring), with Spark's
built-in functions only; every value from the definition is a literal (``F.lit``), never SQL text, and every column
name comes from the field catalogue. Over ``customers``:

- metrics: one per-customer aggregate of ``customer_metrics`` joined back (money metrics from the row in the
  segment's currency, the others combined as :data:`activators.segments.fields.METRIC_AGGREGATES` says);
- behaviour: per criterion, the customer's count of matching ``customer_events`` (grouped, joined back, 0 when none);
  windows are ``occurred_at >= now - N days AND occurred_at <= now``, ``now`` being the Spark query's
  ``current_timestamp()``; ``properties`` match as PostgreSQL's ``@>`` matches scalars: the key is present with the
  same JSON type and value;
- custom fields: the key of ``customers.custom_fields`` read as a Variant (``from_json`` to a map looked up with the
  key as a literal), so that the JSON type is known as ``jsonb_typeof`` knows it: a number criterion compares only
  JSON numbers (the numeric guard: text such as ``"many"`` never matches and never fails), a boolean one only JSON
  booleans, a text one the value's text (``->>``).

Nulls follow three-valued logic as in SQL (a criterion on a null field is not true), except ``not_equals`` and
``not_in``, which count null as "not equal", and ``exists: false``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from activators.segments.compile_sql import like_pattern
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

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyspark.sql import Column, DataFrame, SparkSession

#: Custom fields' and event properties' numbers compare as this type (the processed zone's JSON numbers).
NUMBER_TYPE = "decimal(38, 9)"
#: How ``schema_of_variant`` names a JSON number (integers parse as BIGINT, fractions as DECIMAL, exponents DOUBLE).
_VARIANT_NUMBER = r"^(TINYINT|SMALLINT|INT|BIGINT|FLOAT|DOUBLE|DECIMAL)"
_METRIC_FUNCTIONS = {"sum": "sum", "min": "min", "max": "max"}


@dataclass(frozen=True)
class LakeTables:
    """The three tables a segment reads, as DataFrames (``metrics``, ``events`` None when the tenant lacks them)."""

    customers: DataFrame
    metrics: DataFrame | None = None
    events: DataFrame | None = None

    @classmethod
    def read(cls, spark: SparkSession, catalog: Catalog, tenant: str) -> LakeTables:
        """The tenant's current snapshots (through ``read_table``), only the columns segments use."""
        from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_table

        def read(name: str) -> DataFrame | None:
            if not catalog.table_exists((tenant, name)):
                return None
            return read_table(spark, catalog.load_table((tenant, name))).drop(DATA_FILE_COLUMN)

        customers = read(CUSTOMERS_TABLE)
        if customers is None:
            from activators.segments.model import SegmentDefinitionError

            raise SegmentDefinitionError(
                f"tenant {tenant!r} has no customers table in the processed zone; run 'cdp transform run' first"
            )
        events = read(EVENTS_TABLE)
        if events is not None:
            events = events.select("customer_id", "type", "occurred_at", "properties")
        return cls(customers=customers, metrics=read(METRICS_TABLE), events=events)


def _spark_value(kind: FieldType, value: Any) -> Any:
    """A definition's value as the literal Spark compares: numbers as Decimal, timestamps as aware datetimes."""
    if isinstance(value, list):
        return [_spark_value(kind, item) for item in value]
    if kind is FieldType.NUMBER and is_number(value):
        return Decimal(str(value))
    if kind is FieldType.TIMESTAMP:
        parsed = parse_timestamp(value)
        return parsed if parsed is not None else value
    return value


def _literal(value: Any) -> Column:
    from pyspark.sql import functions as F

    return F.lit(value)


def _is_json(value: Column, kind: str) -> Column:
    """Whether a Variant holds a JSON ``kind`` (``string``, ``number``, ``boolean``, ``array``); null when absent."""
    from pyspark.sql import functions as F

    name = F.schema_of_variant(value)
    if kind == "number":
        return name.rlike(_VARIANT_NUMBER)
    if kind == "array":
        return name.startswith("ARRAY")
    return name == kind.upper()


def _json_scalar_matches(value: Column, expected: str | int | float | bool) -> Column:
    """A Variant equal to a JSON scalar with its type (a number equals a number, ``"7"`` is not ``7``)."""
    from pyspark.sql import functions as F

    if isinstance(expected, bool):
        return _is_json(value, "boolean") & (F.try_variant_get(value, "$", "boolean") == F.lit(expected))
    if is_number(expected):
        number = F.try_variant_get(value, "$", NUMBER_TYPE)
        return _is_json(value, "number") & (number == F.lit(Decimal(str(expected))))
    return _is_json(value, "string") & (F.try_variant_get(value, "$", "string") == F.lit(expected))


def _window(column: Column, days: int) -> Column:
    """``column`` within the last ``days`` days up to now (both ends inclusive)."""
    from pyspark.sql import functions as F

    now = F.current_timestamp()
    return (column >= now - F.make_dt_interval(days=F.lit(days))) & (column <= now)


def compare(column: Column, operator: Operator, value: Any) -> Column:
    """``column OPERATOR value`` with the null rules of the module's docstring."""
    if operator is Operator.EQUALS:
        return column == _literal(value)
    if operator is Operator.NOT_EQUALS:
        return ~column.eqNullSafe(_literal(value))
    if operator is Operator.GT:
        return column > _literal(value)
    if operator is Operator.LT:
        return column < _literal(value)
    if operator is Operator.GTE:
        return column >= _literal(value)
    if operator is Operator.LTE:
        return column <= _literal(value)
    if operator is Operator.IN:
        return column.isin([_literal(item) for item in value])
    if operator is Operator.NOT_IN:
        return column.isNull() | ~column.isin([_literal(item) for item in value])
    if operator is Operator.EXISTS:
        return column.isNotNull() if value else column.isNull()
    if operator is Operator.BETWEEN:
        low, high = value
        return column.between(_literal(low), _literal(high))
    raise AssertionError(f"operator {operator} reached compare()")  # check_segment refuses it first


@dataclass
class _Compiler:
    segment: Segment
    catalog: FieldCatalog
    tables: LakeTables
    metrics: dict[str, SegmentField] = field(default_factory=dict)
    #: Per behavioural criterion: the name of its count column and the frame of counts per customer.
    counts: list[tuple[str, DataFrame]] = field(default_factory=list)

    # -- criteria ---------------------------------------------------------------------------------------------------

    def group(self, group: Group) -> Column:
        from pyspark.sql import functions as F

        if not group.criteria:
            return F.lit(group.logic is Logic.AND)
        parts = [self.criterion(item) for item in group.criteria]
        combined = parts[0]
        for part in parts[1:]:
            combined = (combined & part) if group.logic is Logic.AND else (combined | part)
        return combined

    def criterion(self, criterion: Condition | EventCondition | Group) -> Column:
        if isinstance(criterion, Group):
            return self.group(criterion)
        if isinstance(criterion, EventCondition):
            return self.event(criterion)
        return self.condition(criterion)

    def event(self, event: EventCondition) -> Column:
        """The customer's count of matching events (joined back later as its own column) against the bounds."""
        from pyspark.sql import functions as F

        if event.max_count is None and event.min_count == 0:
            return F.lit(True)  # At least zero times: everyone.
        events = self.tables.events
        if events is None:  # check_segment refuses behaviour without the table; an empty frame keeps this total.
            events = self.tables.customers.sparkSession.createDataFrame(
                [], "customer_id string, type string, occurred_at timestamp, properties string"
            )
        matching = F.col("type") == F.lit(event.event_type)
        if event.within_days is not None:
            matching = matching & _window(F.col("occurred_at"), event.within_days)
        if event.properties:
            payload = F.from_json(F.col("properties"), "map<string, variant>")
            for key, expected in event.properties.items():
                matching = matching & _json_scalar_matches(payload[F.lit(key)], expected)
        name = f"_cdp_event_count_{len(self.counts)}"
        counted = events.where(matching).groupBy("customer_id").agg(F.count(F.lit(1)).alias(name))
        self.counts.append((name, counted))
        count = F.coalesce(F.col(name), F.lit(0))
        if event.max_count is None:
            return count >= F.lit(event.min_count)
        return count.between(F.lit(event.min_count), F.lit(event.max_count))

    def column(self, resolved: SegmentField) -> Column:
        from pyspark.sql import functions as F

        if resolved.source is FieldSource.METRICS:
            self.metrics[resolved.column] = resolved
            return F.col(f"_cdp_metric_{resolved.column}")
        return F.col(f"`{resolved.column}`")

    def condition(self, condition: Condition) -> Column:
        from pyspark.sql import functions as F

        resolved = self.catalog.resolve(condition.field)
        if resolved.type is FieldType.CUSTOM:
            return self.custom(resolved, condition)
        column = self.column(resolved)
        operator = condition.operator
        value = _spark_value(resolved.type, condition.value)
        if resolved.type is FieldType.TEXT_LIST:
            if operator is Operator.EXISTS:
                holds = F.coalesce(F.size(column), F.lit(0)) > 0
                return holds if condition.value else ~holds
            return F.array_contains(column, F.lit(value))  # contains: the list holds the value
        if operator is Operator.CONTAINS:
            return column.ilike(like_pattern(str(value)))
        if operator is Operator.WITHIN_LAST:
            return _window(column, condition.value)
        return compare(column, operator, value)

    def custom(self, resolved: SegmentField, condition: Condition) -> Column:
        """A custom field: its Variant compared as text, as a number, or as a boolean (see the module's docstring)."""
        from pyspark.sql import functions as F

        operator, value = condition.operator, condition.value
        fields = F.from_json(F.col(f"`{resolved.column}`"), "map<string, variant>")
        json_value = fields[F.lit(resolved.key)]
        # ->>: SQL null for a missing key and for JSON null; the value's text otherwise.
        text_value = F.when(~F.is_variant_null(json_value), F.try_variant_get(json_value, "$", "string"))
        if operator is Operator.EXISTS:
            return text_value.isNotNull() if value else text_value.isNull()
        if operator is Operator.CONTAINS:  # A JSON list holds the text; any other value holds it as a substring.
            items = F.try_variant_get(json_value, "$", "array<variant>")
            holds = F.exists(items, lambda item: _json_scalar_matches(item, value))
            return F.when(_is_json(json_value, "array"), holds).otherwise(text_value.ilike(like_pattern(value)))
        sample = value[0] if isinstance(value, list) else value
        if isinstance(sample, bool):
            typed = F.when(_is_json(json_value, "boolean"), F.try_variant_get(json_value, "$", "boolean"))
            return compare(typed, operator, value)
        if is_number(sample):
            typed = F.when(_is_json(json_value, "number"), F.try_variant_get(json_value, "$", NUMBER_TYPE))
            return compare(typed, operator, _spark_value(FieldType.NUMBER, value))
        return compare(text_value, operator, value)  # Spark orders text by code point, as the "C" collation does.

    # -- the frame --------------------------------------------------------------------------------------------------

    def metrics_frame(self) -> DataFrame:
        from pyspark.sql import functions as F

        metrics = self.tables.metrics
        if metrics is None:  # check_segment refuses metrics the catalogue lacks; keep this total anyway.
            raise AssertionError("a metric reached the lake compiler without a customer_metrics table")
        columns = []
        for name, metric in sorted(self.metrics.items()):
            alias = f"_cdp_metric_{name}"
            if metric.money:
                in_currency = F.when(F.col("currency") == F.lit(self.segment.currency), F.col(f"`{name}`"))
                columns.append(F.max(in_currency).alias(alias))
            else:
                aggregate: Callable[[Column], Column] = getattr(F, _METRIC_FUNCTIONS[metric.aggregate])
                columns.append(aggregate(F.col(f"`{name}`")).alias(alias))
        return metrics.groupBy("customer_id").agg(*columns)

    def compile(self) -> DataFrame:
        where = self.group(self.segment.criteria)
        frame = self.tables.customers
        if self.metrics:
            frame = frame.join(self.metrics_frame(), "customer_id", "left")
        for _name, counted in self.counts:
            frame = frame.join(counted, "customer_id", "left")
        return frame.where(where).select("customer_id").distinct()


def members_frame(segment: Segment, tables: LakeTables, catalog: FieldCatalog) -> DataFrame:
    """The ids of ``segment``'s members (one column ``customer_id``), from ``tables``; checked against ``catalog``
    first (a SegmentDefinitionError for anything that does not fit), as the PostgreSQL engine checks."""
    check_segment(segment, catalog)
    return _Compiler(segment, catalog, tables).compile()
