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
import json
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
    elif key == "PHONE":  # digits only: no trimming or lower case needed first
        normalised = pc.replace_substring_regex(pc.replace_substring_regex(text, "[^0-9]", ""), "^0+", "")
    elif key == "ZIP":
        compact = pc.replace_substring_regex(pc.utf8_lower(text), r"\s", "")
        normalised = pc.replace_substring_regex(compact, "-.*$", "")
    else:
        lowered = pc.utf8_lower(pc.utf8_trim(text, characters=_EDGE_CHARACTERS))
        if key == "EMAIL":
            normalised = lowered
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


#: Keys nearly unique per person: normalised and hashed value by value. The others repeat (names, places, countries):
#: each distinct value is normalised and hashed once.
_UNIQUE_KEYS = frozenset({"EXTERN_ID", "EMAIL", "PHONE"})


def _hash_each(normalised: pa.Array) -> pa.Array:
    return pa.array(sha256_hex(normalised.to_pylist()), pa.string())


def hashed_column(key: str, values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The payload column of ``key``: normalised, then hashed unless the key is sent as it is; ``""`` when missing."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if key in UNHASHED_KEYS:
        return pc.fill_null(normalize_column(key, values), "")
    if key in _UNIQUE_KEYS:
        return _hash_each(normalize_column(key, values))
    encoded = pc.dictionary_encode(values)
    digests = _hash_each(normalize_column(key, encoded.dictionary))
    return pc.fill_null(pc.take(digests, encoded.indices), "")


def key_column(key: str, values: pa.Array | pa.ChunkedArray) -> list[str]:
    """:func:`hashed_column` as a list."""
    column: list[str] = hashed_column(key, values).to_pylist()
    return column


_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _json_string_bodies(values: pa.Array) -> pa.Array:
    """Each text as the inside of a JSON string: hex digests as they are, the rare id with a quote, a backslash or a
    control character escaped by the json module."""
    needs = pc.match_substring_regex(values, _NEEDS_ESCAPE)
    if not pc.any(needs).as_py():
        return values
    pairs = zip(values.to_pylist(), needs.to_pylist(), strict=True)
    escaped = [json.dumps(value)[1:-1] if flag else value for value, flag in pairs]
    return pa.array(escaped, pa.string())


def payload_rows(table: pa.Table, schema: Sequence[str] = SCHEMA) -> tuple[pa.Array, pa.Array]:
    """The payload's ``data`` rows of a segment export's ``table``, each as JSON array text (keys in ``schema``
    order, built with Arrow, no Python object per value), and per row whether it holds something Meta can match on
    (an email, a phone or a name)."""
    columns: dict[str, pa.Array] = {}
    for key in schema:
        column = COLUMN_FOR_KEY[key]
        values = table.column(column) if column in table.column_names else pa.nulls(table.num_rows, pa.string())
        columns[key] = hashed_column(key, values)
    parts = [_json_string_bodies(column) if key in UNHASHED_KEYS else column for key, column in columns.items()]
    inner = pc.binary_join_element_wise(*parts, '","')
    rows = pc.binary_join_element_wise('["', inner, '"]', "")
    matchable = pa.array([False] * table.num_rows)
    for key in MATCHING_KEYS:
        if key in columns:
            matchable = pc.or_(matchable, pc.not_equal(columns[key], ""))
    return rows, matchable


def payload_json(rows: pa.Array, schema: Sequence[str] = SCHEMA) -> str:
    """The ``payload`` parameter, ``{"schema": [...], "is_raw": true, "data": [rows]}``, from JSON row texts (joined
    by Arrow into one string)."""
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows), ",")[0].as_py()
    return f'{{"schema":{json.dumps(list(schema))},"is_raw":true,"data":[{joined}]}}'


def members_table(members: Sequence[Mapping[str, Any]], schema: Sequence[str] = SCHEMA) -> pa.Table:
    """The export columns ``schema`` reads, from rows as mappings (a Delivery's ``columns``), all as text."""
    arrays = {}
    for key in schema:
        column = COLUMN_FOR_KEY[key]
        arrays[column] = pa.array(
            [None if (value := member.get(column)) is None else str(value) for member in members], pa.string()
        )
    return pa.table(arrays)
