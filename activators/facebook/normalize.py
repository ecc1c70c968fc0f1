"""Meta's Custom Audience identifiers: each key normalised as Meta documents it, then SHA-256 hex (EXTERN_ID unhashed).

Normalisation runs on whole Arrow columns (pyarrow.compute: trim, lower case, regular expressions), so per value only
the hash is left in Python. The rules follow Meta's "Hashing and Normalizing Data" table for customer file audiences
and give the same hashes as the official SDK (facebook-business) on the cases of tests/test_activator_facebook.py:

| key | column | rule |
| --- | --- | --- |
| EXTERN_ID | customer_id | trimmed, not hashed (Meta: hashing not required; it matches our own earlier uploads) |
| EMAIL | email | trimmed (whitespace and dots at the ends), lower case |
| PHONE | phone | digits only, leading zeros removed (a "+" or "00" prefix); the country code must be in it |
| FN, LN | first_name, last_name | lower case, letters a-z only (no spaces, punctuation or accents: as the SDK) |
| CT | city | lower case, letters a-z only |
| ST | region | lower case, letters a-z only |
| ZIP | postal_code | lower case, no whitespace, the part before a "-" (US ZIP+4 -> ZIP) |
| COUNTRY | country | lower case ISO 3166-1 alpha-2; anything else is left blank |

A value that normalises to nothing is sent blank (``""``), as Meta asks for an unknown key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pycountry

#: The multi-key schema sent with every request, in this order.
SCHEMA: tuple[str, ...] = ("EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY")

#: The segment export's column each key is read from (docs/segments.md, "Audience exports").
COLUMN_FOR_KEY: Mapping[str, str] = {
    "EXTERN_ID": "customer_id",
    "EMAIL": "email",
    "PHONE": "phone",
    "FN": "first_name",
    "LN": "last_name",
    "CT": "city",
    "ST": "region",
    "ZIP": "postal_code",
    "COUNTRY": "country",
}

#: Keys sent as they are (not hashed).
UNHASHED_KEYS = frozenset({"EXTERN_ID"})

#: The keys that identify a person on their own: a row without any of them cannot be matched.
MATCHING_KEYS = ("EMAIL", "PHONE", "FN", "LN")

# What the SDK's multi-key upload strips from both ends of every value before normalising it.
_EDGE_CHARACTERS = " \t\r\n\0\x0b."
_COUNTRY_CODES = pa.array(sorted(country.alpha_2.lower() for country in pycountry.countries))


def _as_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def normalize_column(key: str, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``values`` normalised for schema key ``key``; a value with nothing left is null."""
    text = _as_strings(values)
    if key == "EXTERN_ID":
        normalised = pc.utf8_trim_whitespace(text)
    elif key == "ZIP":
        compact = pc.replace_substring_regex(pc.utf8_lower(text), r"\s", "")
        normalised = pc.replace_substring_regex(compact, "-.*$", "")
    else:
        lowered = pc.utf8_lower(pc.utf8_trim(text, characters=_EDGE_CHARACTERS))
        if key == "EMAIL":
            normalised = lowered
        elif key == "PHONE":
            normalised = pc.replace_substring_regex(pc.replace_substring_regex(lowered, "[^0-9]", ""), "^0+", "")
        elif key in ("FN", "LN", "CT", "ST"):
            normalised = pc.replace_substring_regex(lowered, "[^a-z]", "")
        elif key == "COUNTRY":
            letters = pc.replace_substring_regex(lowered, "[^a-z]", "")
            normalised = pc.if_else(pc.is_in(letters, value_set=_COUNTRY_CODES), letters, None)
        else:
            raise ValueError(f"unknown Custom Audience key '{key}'; keys: {', '.join(SCHEMA)}")
    return pc.if_else(pc.equal(normalised, ""), None, normalised)


def sha256_hex(values: Iterable[str | None]) -> list[str]:
    """SHA-256 hex of each value (UTF-8); ``""`` for a missing one."""
    sha256 = hashlib.sha256
    return [sha256(value.encode()).hexdigest() if value else "" for value in values]


def key_column(key: str, values: pa.Array | pa.ChunkedArray) -> list[str]:
    """The payload column of ``key``: normalised, then hashed unless the key is sent as it is."""
    normalised = normalize_column(key, values).to_pylist()
    if key in UNHASHED_KEYS:
        return [value or "" for value in normalised]
    return sha256_hex(normalised)


def table_rows(table: pa.Table, schema: Sequence[str] = SCHEMA) -> tuple[list[list[str]], list[bool]]:
    """The payload rows of a segment export's ``table`` (one per member, keys in ``schema`` order) and, per row,
    whether it holds something Meta can match on (an email, a phone or a name)."""
    columns: list[list[str]] = []
    for key in schema:
        column = COLUMN_FOR_KEY[key]
        values = table.column(column) if column in table.column_names else pa.nulls(table.num_rows, pa.string())
        columns.append(key_column(key, values))
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in range(table.num_rows)]
    matching = [schema.index(key) for key in MATCHING_KEYS if key in schema]
    matchable = [any(row[index] for index in matching) for row in rows]
    return rows, matchable


def members_table(members: Sequence[Mapping[str, Any]], schema: Sequence[str] = SCHEMA) -> pa.Table:
    """The export columns ``schema`` reads, from rows as mappings (a Delivery's ``columns``), all as text."""
    arrays = {}
    for key in schema:
        column = COLUMN_FOR_KEY[key]
        arrays[column] = pa.array(
            [None if (value := member.get(column)) is None else str(value) for member in members], pa.string()
        )
    return pa.table(arrays)
