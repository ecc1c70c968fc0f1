"""Quality rules as data, and the split of a transform's output into valid and rejected rows.

A table declares its rules (:class:`Required`, :class:`Format`, :class:`Range`, :class:`Allowed`);
:func:`split_by_rules` evaluates them all in one pass of Spark built-in expressions and returns the rows that pass and
the rows that do not, each rejected row carrying the first rule it broke, the column, its raw-zone file and the row as
JSON. :func:`write_rejected` lands them in the DLQ as ``transform_rejected``: rejected rows are never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType, FieldError
from plugins.core.errors import CdpError
from plugins.core.layout import parse_batch_key
from plugins.core.raw_zone import WrittenBatch
from plugins.core.storage import ObjectStore
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

RULE_COLUMN = "_cdp_rule"
RULE_COLUMN_NAME = "_cdp_column"
ROW_COLUMN = "_cdp_row"
REJECTED_COLUMNS = (RULE_COLUMN, RULE_COLUMN_NAME, SOURCE_FILE_COLUMN, ROW_COLUMN)
UNKNOWN_PROVIDER = "unknown"


class QualityRuleError(CdpError):
    """A quality rule that cannot be evaluated: it names a column the table does not have."""


@dataclass(frozen=True)
class Required:
    """``column`` is not null (and, for strings, not blank)."""

    column: str

    @property
    def name(self) -> str:
        return "required"

    def broken(self, value: Column) -> Column:
        from pyspark.sql import functions as F

        return value.isNull() | (F.trim(value.cast("string")) == "")


@dataclass(frozen=True)
class Format:
    """``column``, when present, matches the regular expression ``pattern`` (Java syntax, searched: anchor it)."""

    column: str
    pattern: str

    @property
    def name(self) -> str:
        return f"format {self.pattern}"

    def broken(self, value: Column) -> Column:
        return value.isNotNull() & ~value.cast("string").rlike(self.pattern)


@dataclass(frozen=True)
class Range:
    """``column``, when present, lies within ``[minimum, maximum]`` (either bound may be left open)."""

    column: str
    minimum: int | float | Decimal | datetime | None = None
    maximum: int | float | Decimal | datetime | None = None

    @property
    def name(self) -> str:
        return f"range [{'' if self.minimum is None else self.minimum}, {'' if self.maximum is None else self.maximum}]"

    def broken(self, value: Column) -> Column:
        from pyspark.sql import functions as F

        out = F.lit(False)
        if self.minimum is not None:
            out = out | (value < F.lit(self.minimum))
        if self.maximum is not None:
            out = out | (value > F.lit(self.maximum))
        return value.isNotNull() & out


@dataclass(frozen=True)
class Allowed:
    """``column``, when present, is one of ``values``."""

    column: str
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return f"allowed {', '.join(map(str, self.values))}"

    def broken(self, value: Column) -> Column:
        return value.isNotNull() & ~value.isin(list(self.values))


QualityRule = Required | Format | Range | Allowed


#: The column :func:`mark_broken_rules` adds: the index of the first rule a row breaks, null when it breaks none.
BROKEN_RULE_COLUMN = "_cdp_broken_rule"


def mark_broken_rules(df: DataFrame, rules: Sequence[QualityRule]) -> DataFrame:
    """``df`` with :data:`BROKEN_RULE_COLUMN`: the first rule (in ``rules`` order) each row breaks, or null."""
    from pyspark.sql import functions as F

    if missing := sorted({rule.column for rule in rules} - set(df.columns)):
        raise QualityRuleError(f"quality rules name column(s) {', '.join(missing)} the table does not have")
    first_broken: Column = F.lit(None).cast("int")
    for index in reversed(range(len(rules))):  # Built inside out, so the earliest broken rule wins.
        first_broken = F.when(rules[index].broken(F.col(rules[index].column)), F.lit(index)).otherwise(first_broken)
    return df.withColumn(BROKEN_RULE_COLUMN, first_broken)


def rejected_rows(marked: DataFrame, rules: Sequence[QualityRule]) -> DataFrame:
    """The rows of ``marked`` (:func:`mark_broken_rules`) that break a rule, as :func:`split_by_rules` returns them."""
    from pyspark.sql import functions as F

    names = F.array(*[F.lit(rule.name) for rule in rules]) if rules else F.array().cast("array<string>")
    columns = F.array(*[F.lit(rule.column) for rule in rules]) if rules else F.array().cast("array<string>")
    row_columns = [name for name in marked.columns if not name.startswith("_cdp_")]
    source = F.col(SOURCE_FILE_COLUMN) if SOURCE_FILE_COLUMN in marked.columns else F.lit(None).cast("string")
    return marked.where(F.col(BROKEN_RULE_COLUMN).isNotNull()).select(
        F.element_at(names, F.col(BROKEN_RULE_COLUMN) + 1).alias(RULE_COLUMN),
        F.element_at(columns, F.col(BROKEN_RULE_COLUMN) + 1).alias(RULE_COLUMN_NAME),
        source.alias(SOURCE_FILE_COLUMN),
        F.to_json(F.struct(*[F.col(name) for name in row_columns])).alias(ROW_COLUMN),
    )


def split_by_rules(df: DataFrame, rules: Sequence[QualityRule]) -> tuple[DataFrame, DataFrame]:
    """``(valid, rejected)``: the rows of ``df`` that pass every rule, and the others.

    ``valid`` has ``df``'s columns. ``rejected`` has ``_cdp_rule`` (the first broken rule, in ``rules`` order, e.g.
    ``required``), ``_cdp_column``, ``_cdp_source_file`` (null when ``df`` has none) and ``_cdp_row`` (the row's
    columns as JSON, framework columns left out).
    """
    from pyspark.sql import functions as F

    marked = mark_broken_rules(df, rules)
    valid = marked.where(F.col(BROKEN_RULE_COLUMN).isNull()).drop(BROKEN_RULE_COLUMN)
    return valid, rejected_rows(marked, rules)


def reason_counts(df: DataFrame) -> DataFrame:
    """How many values normalisation nulled, per column and kind of reason: ``column``, ``reason``, ``rows``.

    Reads the ``_cdp_reason_<column>`` companions (plugins.transforms.normalize.with_normalized); the reason's kind is
    its text before the first colon (``invalid email``), so the per-value details do not split the counts.
    """
    from pyspark.sql import functions as F

    from plugins.transforms.normalize import REASON_PREFIX

    reasons = [name for name in df.columns if name.startswith(REASON_PREFIX)]
    if not reasons:
        return df.sparkSession.createDataFrame([], "column string, reason string, rows long")
    pairs = F.array(
        *[
            F.struct(F.lit(name.removeprefix(REASON_PREFIX)).alias("column"), F.col(name).alias("reason"))
            for name in reasons
        ]
    )
    found = df.select(F.explode(pairs).alias("pair")).select("pair.*").where(F.col("reason").isNotNull())
    kinds = found.withColumn("reason", F.substring_index(F.col("reason"), ":", 1))
    return kinds.groupBy("column", "reason").agg(F.count(F.lit(1)).alias("rows")).orderBy("column", "reason")


def rejected_letters(rows: Iterable[Any], table: str) -> Iterable[tuple[str, DeadLetter]]:
    """``(provider, dead letter)`` for each row of :func:`split_by_rules`' ``rejected`` (Spark Rows or dicts).

    The provider is the one of the raw file the row came from; the DLQ stream is the table's name.
    """
    for row in rows:
        values = row.asDict() if hasattr(row, "asDict") else dict(row)
        source_file = values.get(SOURCE_FILE_COLUMN)
        provider = UNKNOWN_PROVIDER
        if source_file:
            try:
                provider = parse_batch_key(str(source_file)).provider
            except ValueError:
                provider = UNKNOWN_PROVIDER
        rule, column = values[RULE_COLUMN], values[RULE_COLUMN_NAME]
        letter = DeadLetter(
            error_type=ErrorType.TRANSFORM_REJECTED,
            error_message=f"table {table}: column {column} breaks the rule {rule}",
            stream=table,
            record=orjson.loads(values[ROW_COLUMN]),
            errors=[FieldError(f"$.{column}", f"breaks the rule {rule}")],
            context={"rule": rule, "column": column, "source_file": source_file, "table": table},
        )
        yield provider, letter


def write_rejected(
    dlq: ObjectStore, tenant: str, table: str, rows: Iterable[Any], *, run_id: str | None = None
) -> list[WrittenBatch]:
    """Write the rejected rows of ``table`` to the DLQ (one batch per provider) as ``transform_rejected``."""
    by_provider: dict[str, list[DeadLetter]] = {}
    for provider, letter in rejected_letters(rows, table):
        by_provider.setdefault(provider, []).append(letter)
    written: list[WrittenBatch] = []
    when = datetime.now(UTC)
    for provider, letters in sorted(by_provider.items()):
        queue = DeadLetterQueue(dlq, tenant=tenant, provider=provider, run_id=run_id)
        written.extend(queue.write(letters, when=when))
    return written
