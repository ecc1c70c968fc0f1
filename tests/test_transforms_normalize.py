"""Normalisation tables on real Spark: each function over many inputs, invalid ones null with a reason."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.transforms.normalize import (
    INVALID_TIMESTAMP,
    UNKNOWN_COUNTRY,
    _checked_email,
    _validated_email,
    email,
    person_name,
    phone,
    reason_column,
    timestamp_utc,
    with_country,
    with_normalized,
)

EMAILS = [
    ("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com", None),
    ("bob+tag@sub.example.org", "bob+tag@sub.example.org", None),
    ("ZOË@Exämple.de", "zoë@exämple.de", None),
    ("", None, None),
    ("   ", None, None),
    (None, None, None),
    ("no-at-sign.example.com", None, "invalid email"),
    ("two@@example.com", None, "invalid email"),
    ("trailing.dot.@example.com", None, "invalid email"),
    ("user@localhost", None, "invalid email"),
    ("a b@example.com", None, "invalid email"),
]
PHONES = [
    ("+33 6 12 34 56 78", "US", "+33612345678", None),
    ("06 12 34 56 78", "FR", "+33612345678", None),
    ("(415) 555-2671", "US", "+14155552671", None),
    ("415.555.2671", "us", "+14155552671", None),
    ("+44 20 7946 0958", None, "+442079460958", None),
    ("030 1234567", "DE", "+49301234567", None),
    ("", "US", None, None),
    (None, "US", None, None),
    ("12", "US", None, "invalid phone number"),
    ("not a phone", "US", None, "invalid phone number"),
    ("0612345678", None, None, "invalid phone number"),  # No country code and no default region.
    ("+1 555 000 0000", "US", None, "invalid phone number"),
]
COUNTRIES = [
    ("FR", "FR", None),
    ("fr", "FR", None),
    ("FRA", "FR", None),
    (" france ", "FR", None),
    ("United States", "US", None),
    ("USA", "US", None),
    ("United Kingdom", "GB", None),
    ("UK", "GB", None),
    ("Côte d'Ivoire", "CI", None),
    ("Cote d'Ivoire", "CI", None),
    ("DEU", "DE", None),
    ("276", "DE", None),
    ("Germany", "DE", None),
    ("jp", "JP", None),
    ("", None, None),
    (None, None, None),
    ("Atlantis", None, UNKNOWN_COUNTRY),
    ("ZZ", None, UNKNOWN_COUNTRY),
]
NAMES = [
    ("Ame\u0301lie", "Amélie"),  # e + combining acute -> é
    ("  Zoe\u0308 ", "Zoë"),
    ("Amélie", "Amélie"),
    ("\uff2a\uff4f\uff48\uff4e", "\uff2a\uff4f\uff48\uff4e"),  # NFC, not NFKC: full-width letters are kept.
    ("", None),
    (None, None),
]
TIMESTAMPS = [
    ("1767323045", datetime(2026, 1, 2, 3, 4, 5), None),
    ("1767323045.25", datetime(2026, 1, 2, 3, 4, 5, 250000), None),
    ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5), None),
    ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5), None),
    ("2026-01-01T22:04:05.123456-05:00", datetime(2026, 1, 2, 3, 4, 5, 123456), None),
    ("2026-01-02 03:04:05", datetime(2026, 1, 2, 3, 4, 5), None),
    ("2026-01-02", datetime(2026, 1, 2), None),
    ("", None, None),
    (None, None, None),
    ("yesterday", None, INVALID_TIMESTAMP),
    ("2026-13-45T00:00:00Z", None, INVALID_TIMESTAMP),
]


def _rows(frame: Any) -> list[dict[str, Any]]:
    return [row.asDict() for row in frame.orderBy("i").collect()]


def test_emails_are_trimmed_lower_cased_and_syntax_checked(spark) -> None:
    frame = spark.createDataFrame([(i, raw) for i, (raw, _, _) in enumerate(EMAILS)], "i int, email string")

    rows = _rows(with_normalized(frame, "email", email("email")))

    for row, (raw, value, reason) in zip(rows, EMAILS, strict=True):
        assert row["email"] == value, raw
        if reason is None:
            assert row[reason_column("email")] is None, raw
        else:
            assert row[reason_column("email")].startswith(reason), raw


def test_phones_become_e164_with_the_default_region(spark) -> None:
    frame = spark.createDataFrame(
        [(i, raw, region) for i, (raw, region, _, _) in enumerate(PHONES)], "i int, phone string, region string"
    )

    rows = _rows(with_normalized(frame, "phone", phone("phone", frame["region"])))

    for row, (raw, region, value, reason) in zip(rows, PHONES, strict=True):
        assert row["phone"] == value, (raw, region)
        if reason is None:
            assert row[reason_column("phone")] is None, raw
        else:
            assert row[reason_column("phone")].startswith(reason), raw


def test_a_tenant_default_region_applies_to_every_row(spark) -> None:
    frame = spark.createDataFrame([(0, "020 7946 0958"), (1, "+33612345678")], "i int, phone string")

    rows = _rows(with_normalized(frame, "phone", phone("phone", "GB")))

    assert [row["phone"] for row in rows] == ["+442079460958", "+33612345678"]


def test_countries_become_iso_alpha_2_through_the_broadcast_lookup(spark) -> None:
    frame = spark.createDataFrame([(i, raw) for i, (raw, _, _) in enumerate(COUNTRIES)], "i int, country string")

    result = with_country(frame, "country", "country_code")
    rows = _rows(result)

    assert result.columns == ["i", "country", reason_column("country_code"), "country_code"]
    for row, (raw, code, reason) in zip(rows, COUNTRIES, strict=True):
        assert row["country_code"] == code, raw
        assert row[reason_column("country_code")] == reason, raw
    assert "BroadcastHashJoin" in result._jdf.queryExecution().executedPlan().toString()


def test_names_are_unicode_nfc(spark) -> None:
    frame = spark.createDataFrame([(i, raw) for i, (raw, _) in enumerate(NAMES)], "i int, name string")

    rows = _rows(frame.withColumn("name", person_name("name")))

    assert [row["name"] for row in rows] == [value for _, value in NAMES]


@pytest.mark.parametrize("as_number", [False, True])
def test_timestamps_become_utc_from_epoch_seconds_and_offset_strings(spark, as_number) -> None:
    if as_number:  # Epoch seconds as the integers Stripe sends.
        frame = spark.createDataFrame([(0, 1767323045), (1, None)], "i int, at long")
        rows = _rows(with_normalized(frame, "at", timestamp_utc("at")))
        assert [row["at"] for row in rows] == [datetime(2026, 1, 2, 3, 4, 5), None]
        return
    frame = spark.createDataFrame([(i, raw) for i, (raw, _, _) in enumerate(TIMESTAMPS)], "i int, at string")

    rows = _rows(with_normalized(frame, "at", timestamp_utc("at")))

    for row, (raw, value, reason) in zip(rows, TIMESTAMPS, strict=True):
        assert row["at"] == value, raw
        assert row[reason_column("at")] == reason, raw


# The email fast path: a plain ASCII address is checked in two parts (its local part by the dot-atom rule, its domain by
# email-validator once per domain), so it must answer exactly as email-validator on the whole address does.
_LOCAL_PIECES = [
    "ada",
    "b",
    "x1",
    "first.last",
    "a+tag",
    "o'neil",
    "q=x",
    "_",
    "-",
    "~u",
    "#",
    "a..b",
    ".a",
    "a.",
    "é",
    '"quoted"',
    "a b",
    "a@b",
    "a(b)",
    "z" * 64,
    "y" * 65,
    "x" * 200,
    "postmaster",
    "a\tb",
    "",
]
_DOMAIN_LABELS = ["example", "com", "org", "co", "uk", "mail", "xn--bcher-kva", "xn--abc", "ab--cd", "-a", "a-",
                  "a-b", "localhost", "test", "local", "arpa", "onion", "invalid", "123", "1a", "a" * 63, "b" * 64,
                  "ünï", "_srv", "a_b", "", " ", "ex ample", "[1.2.3.4]", "com\n"]  # fmt: skip


@given(
    local=st.one_of(st.sampled_from(_LOCAL_PIECES), st.text(alphabet="ab.+-_@\"' é", max_size=12)),
    labels=st.lists(st.sampled_from(_DOMAIN_LABELS), min_size=0, max_size=4),
    trailer=st.sampled_from(["", ".", "..", "@example.com", " "]),
)
@settings(max_examples=3000, deadline=None)
def test_the_email_fast_path_answers_as_email_validator_on_the_whole_address(
    local: str, labels: list[str], trailer: str
) -> None:
    address = f"{local}@{'.'.join(labels)}{trailer}".lower()
    assert _checked_email.__wrapped__(address) == _validated_email(address)


def test_the_email_fast_path_keeps_the_length_limit_and_gives_each_domain_its_own_answer() -> None:
    long_domain = ".".join(["a" * 60] * 4) + ".com"  # 248 characters: valid on its own
    for address in [f"abcd@{long_domain}", f"abcdefgh@{long_domain}", "ada@example.com", "ada@example.test"]:
        assert _checked_email.__wrapped__(address) == _validated_email(address)
    assert _checked_email.__wrapped__(f"abcdefgh@{long_domain}")[0] is None  # 257 characters: over the limit
    assert _checked_email.__wrapped__("ada@example.test") == (None, _validated_email("ada@example.test")[1])
    # A punycode domain is written in Unicode by email-validator, longer in UTF-8: its length counts there too.
    punycode = "a" * 90 + "@" + idna.encode("中" * 55).decode() + ".com"
    assert len(punycode) <= 254 < len(("a" * 90 + "@" + "中" * 55 + ".com").encode())
    assert _checked_email.__wrapped__(punycode) == _validated_email(punycode)
    assert _checked_email.__wrapped__(punycode)[0] is None
