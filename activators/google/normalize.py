"""A segment member's identifiers as the Data Manager API takes them: normalised as Google documents, then SHA-256
and hex encoded (``encoding: HEX``).

The formatting is Google's own (``google-ads-datamanager-util``'s ``Formatter``: emails trimmed and lower-cased, dots
and ``+suffix`` removed before the ``@`` of gmail.com / googlemail.com; names trimmed and lower-cased; region codes
upper-cased alpha-2; postal codes trimmed). One step comes before it: a phone written without its country code
(``020 7946 0958``) is put in E.164 with phonenumbers and the member's country, because Google's formatter only keeps
the digits and would hash ``+02079460958``, which matches nobody.

A value that cannot be formatted (an address without ``@``, a name that is only blanks) is left out of the member's
identifiers; a member left with none is rejected by the sender with the reason, never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from google.ads.datamanager_util.format import Encoding, Formatter

FORMATTER = Formatter()

#: Google's limit of user identifiers in one member's ``userData``.
MAX_IDENTIFIERS = 10


@dataclass(frozen=True)
class HashedAddress:
    """``AddressInfo``: names hashed, region and postal code in clear, as the API takes them."""

    given_name: str
    family_name: str
    region_code: str
    postal_code: str


@dataclass(frozen=True)
class UserIdentifiers:
    """One member's identifiers, hashed for ``userData.userIdentifiers``, and why any value was left out."""

    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    address: HashedAddress | None = None
    skipped: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.emails or self.phones or self.address)

    def __len__(self) -> int:
        return len(self.emails) + len(self.phones) + (self.address is not None)


def hash_email(email: str) -> str:
    """The hex SHA-256 of the email address formatted as Google documents; ValueError when it is not one."""
    return FORMATTER.process_email_address(email, Encoding.HEX)


def e164(phone: str, country: str | None = None) -> str:
    """``phone`` in E.164: kept when it has a ``+`` country code, else parsed with the member's ``country`` as its
    region; ValueError when it is not a valid number."""
    text = phone.strip()
    if text.startswith("+") or text.startswith("00"):
        return FORMATTER.format_phone_number(text if text.startswith("+") else "+" + text[2:])
    if not country:
        raise ValueError("phone number without a country code and member without a country")
    try:
        parsed = phonenumbers.parse(text, country.strip().upper())
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"phone number does not parse: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("phone number is not valid for its region")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def hash_phone(phone: str, country: str | None = None) -> str:
    """The hex SHA-256 of the phone number in E.164 (see :func:`e164`); ValueError when it is not one."""
    return FORMATTER.process_phone_number(e164(phone, country), Encoding.HEX)


def hashed_address(given_name: str, family_name: str, region_code: str, postal_code: str) -> HashedAddress:
    """An ``AddressInfo``; Google matches on all four parts, so a missing one is a ValueError."""
    return HashedAddress(
        given_name=FORMATTER.process_given_name(given_name, Encoding.HEX),
        family_name=FORMATTER.process_family_name(family_name, Encoding.HEX),
        region_code=FORMATTER.process_region_code(region_code),
        postal_code=FORMATTER.process_postal_code(postal_code),
    )


def _texts(value: Any) -> list[str]:
    """A column's values as non-blank strings (a scalar or a list column such as ``emails``)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [str(item) for item in values if item is not None and str(item).strip()]


def user_identifiers(columns: Mapping[str, Any]) -> UserIdentifiers:
    """A segment export row's identifiers: ``email`` (and ``emails``), ``phone`` (and ``phones``), and the address
    from ``first_name``, ``last_name``, ``country`` and ``postal_code`` when all four are there. Duplicates (the same
    address written twice) count once. ``skipped`` names what was left out and why, without the value (PII)."""
    skipped: list[str] = []
    emails: dict[str, None] = {}
    for email in _texts(columns.get("email")) + _texts(columns.get("emails")):
        try:
            emails[hash_email(email)] = None
        except ValueError as exc:
            skipped.append(f"email: {exc}")
    country = next(iter(_texts(columns.get("country"))), None)
    phones: dict[str, None] = {}
    for phone in _texts(columns.get("phone")) + _texts(columns.get("phones")):
        try:
            phones[hash_phone(phone, country)] = None
        except ValueError as exc:
            skipped.append(f"phone: {exc}")
    parts = [next(iter(_texts(columns.get(name))), None) for name in ("first_name", "last_name", "postal_code")]
    address = None
    if all(parts) and country:
        given, family, postal = (str(part) for part in parts)
        try:
            address = hashed_address(given, family, country, postal)
        except ValueError as exc:
            skipped.append(f"address: {exc}")
    return UserIdentifiers(tuple(emails), tuple(phones), address, tuple(skipped))
