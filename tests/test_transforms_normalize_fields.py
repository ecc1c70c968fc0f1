"""with_normalized_fields on real Spark: every field of a row normalised in one Arrow pass, with the values and reasons
of the per-field functions (email, phone, person_name)."""

from __future__ import annotations

from typing import Any

from plugins.transforms.normalize import FieldSpec, reason_column, with_normalized_fields

# (raw, normalised, reason prefix): the per-field functions' rules, a few cases of each kind.
EMAILS = [
    ("  Grace.Hopper@Example.ORG ", "grace.hopper@example.org", None),
    ("ZOË@Exämple.de", "zoë@exämple.de", None),
    ("   ", None, None),
    (None, None, None),
    ("no-at-sign.example.com", None, "invalid email"),
    ("user@localhost", None, "invalid email"),
]
PHONES = [  # (raw, region, E.164, reason prefix)
    ("06 12 34 56 78", "FR", "+33612345678", None),
    ("(415) 555-2671", "us", "+14155552671", None),
    ("+44 20 7946 0958", None, "+442079460958", None),
    ("", "US", None, None),
    ("12", "US", None, "invalid phone number"),
    ("0612345678", None, None, "invalid phone number"),
    ("+1 555 000 0000", "US", None, "invalid phone number"),
]
NAMES = [  # (raw, NFC and trimmed)
    ("Ame\u0301lie", "Amélie"),
    ("  Zoe\u0308 ", "Zoë"),
    ("\uff2a\uff4f\uff48\uff4e", "\uff2a\uff4f\uff48\uff4e"),  # NFC, not NFKC: full-width letters are kept.
    ("  ", None),
    (None, None),
]


def _python_passes(frame: Any) -> int:
    """How many Arrow round trips to Python the frame's plan makes (one ArrowEvalPython node each)."""
    plan = frame._jdf.queryExecution().executedPlan().toString()
    return int(plan.count("ArrowEvalPython"))


def test_emails_phones_and_names_are_normalised_together_in_one_python_pass(spark) -> None:
    width = max(len(EMAILS), len(PHONES), len(NAMES))

    def at(table: list[tuple[Any, ...]], index: int, position: int) -> Any:
        return table[index][position] if index < len(table) else None

    frame = spark.createDataFrame(
        [(i, at(EMAILS, i, 0), at(PHONES, i, 0), at(PHONES, i, 1), at(NAMES, i, 0), at(NAMES, i, 0)) for i in
         range(width)],
        "i int, email string, phone string, region string, first string, city string",
    )  # fmt: skip

    result = with_normalized_fields(
        frame,
        {
            "email": FieldSpec.email("email"),
            "phone": FieldSpec.phone("phone", frame["region"]),
            "first": FieldSpec.name("first"),
            "town": FieldSpec.name("city"),
        },
    )
    rows = [row.asDict() for row in result.orderBy("i").collect()]

    assert _python_passes(result) == 1
    assert reason_column("first") not in result.columns  # Names have no reason: blank is null, never invalid.
    for row in rows:
        i = row["i"]
        if i < len(EMAILS):
            raw, value, reason = EMAILS[i]
            assert row["email"] == value, raw
            assert (row[reason_column("email")] or "").startswith(reason or ""), raw
            assert (row[reason_column("email")] is None) == (reason is None), raw
        if i < len(PHONES):
            raw, region, value, reason = PHONES[i]
            assert row["phone"] == value, (raw, region)
            assert (row[reason_column("phone")] is None) == (reason is None), raw
            assert (row[reason_column("phone")] or "").startswith(reason or ""), raw
        if i < len(NAMES):
            raw, value = NAMES[i]
            assert row["first"] == value, raw
            assert row["town"] == value, raw
            assert row["city"] == raw  # The input column stays as it was when the output has another name.


def test_a_tenant_default_region_applies_to_every_row_of_the_pass(spark) -> None:
    frame = spark.createDataFrame([(0, "020 7946 0958"), (1, "+33612345678"), (2, None)], "i int, phone string")

    result = with_normalized_fields(frame, {"phone": FieldSpec.phone("phone", "GB")})

    assert [row["phone"] for row in result.orderBy("i").collect()] == ["+442079460958", "+33612345678", None]
