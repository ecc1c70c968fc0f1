"""The suppression list: addresses a channel must never send to again (hard bounces, complaints, unsubscribes).

An address is what the channel sends to, normalised: an email trimmed and lower-cased, a phone in E.164. A
suppression is per channel and address (``primary key (channel, address)``): the first reason recorded stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg import Connection, sql

from plugins.core.errors import CdpError
from plugins.core.layout import validate_name

SUPPRESSION_REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")


class SuppressionError(CdpError):
    """A suppression that cannot be recorded: an unknown reason or an empty address."""


def normalize_address(channel: str, address: str) -> str:
    """``address`` as the suppression list keys it: emails trimmed and lower-cased, phones in E.164 when they parse
    (a number without its +country code is kept as written, digits only)."""
    value = address.strip()
    if channel == "sms" or (channel != "email" and "@" not in value):
        import phonenumbers

        try:
            parsed = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            return "".join(ch for ch in value if ch.isdigit() or ch == "+")
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return value.lower()


def _table(tenant: str) -> sql.Composed:
    return sql.SQL("{}.suppressions").format(sql.Identifier(validate_name("tenant", tenant)))


def suppress(
    conn: Connection[Any],
    tenant: str,
    channel: str,
    address: str,
    reason: str,
    *,
    customer_id: str | None = None,
    campaign: str | None = None,
) -> bool:
    """Suppress ``address`` on ``channel`` (idempotent, committed); True when it was not suppressed before.

    Call :func:`plugins.activation.ensure_schema` once beforehand."""
    if reason not in SUPPRESSION_REASONS:
        raise SuppressionError(f"unknown suppression reason '{reason}'; use one of {', '.join(SUPPRESSION_REASONS)}")
    normalised = normalize_address(channel, address)
    if not normalised:
        raise SuppressionError(f"an empty {channel} address cannot be suppressed; give the address that bounced")
    with conn.transaction():
        inserted = conn.execute(
            sql.SQL(
                "INSERT INTO {} (channel, address, reason, customer_id, campaign) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (channel, address) DO NOTHING RETURNING address"
            ).format(_table(tenant)),
            (channel, normalised, reason, customer_id, campaign),
        ).fetchone()
    return inserted is not None


def suppressed_addresses(conn: Connection[Any], tenant: str, channel: str, addresses: Iterable[str]) -> set[str]:
    """Which of ``addresses`` (normalised here) are suppressed on ``channel``: one query for the whole batch."""
    wanted = sorted({normalize_address(channel, a) for a in addresses if a})
    if not wanted:
        return set()
    rows = conn.execute(
        sql.SQL("SELECT address FROM {} WHERE channel = %s AND address = ANY(%s)").format(_table(tenant)),
        (channel, wanted),
    ).fetchall()
    return {str(row[0]) for row in rows}


def is_suppressed(conn: Connection[Any], tenant: str, channel: str, address: str) -> bool:
    """Whether ``address`` is suppressed on ``channel``."""
    return bool(suppressed_addresses(conn, tenant, channel, [address]))
