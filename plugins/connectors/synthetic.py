"""Deterministic synthetic people for the provider sandboxes: same seed, same data; realistic, unicode-rich shapes.

:func:`population` is the one population the Stripe, Shopify and Salesforce sandboxes draw their people from, so the
same person turns up in several providers, written the way each provider writes them (see docs/taps.md, "One
synthetic population"). :func:`person` draws a stand-alone person from a caller's generator (scaffolded taps use it).
"""

from __future__ import annotations

import functools
import random
import threading
import unicodedata
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

_FIRST = [
    "Ana",
    "Björn",
    "Chloé",
    "Dmitri",
    "Émile",
    "Fatima",
    "Giulia",
    "Hiroshi",
    "Ingrid",
    "José",
    "Kwame",
    "Léa",
    "Mateo",
    "Nadia",
    "Olúmìdé",
    "Priya",
    "Quentin",
    "Renée",
    "Søren",
    "Tomás",
    "Uma",
    "Valentina",
    "Wei",
    "Xiomara",
    "Yusuf",
    "Zoë",
    "李",
    "Анна",
    "محمد",
    "Zoltán",
]
_LAST = [
    "Andersson",
    "Bianchi",
    "Çelik",
    "Dubois",
    "Eriksen",
    "Fernández",
    "García",
    "Hernández",
    "Ivanova",
    "Jørgensen",
    "Kowalski",
    "López",
    "Müller",
    "Nguyễn",
    "O'Brien",
    "Petrović",
    "Quispe",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Uğur",
    "van der Berg",
    "Wójcik",
    "Xu",
    "Yılmaz",  # noqa: RUF001 - a real Turkish name
    "Zimmermann",
    "王",
    "Смирнов",
    "Haddad",
    "Ng",
]
_CITIES = [
    ("Berlin", "DE", "10115", None),
    ("Lyon", "FR", "69001", None),
    ("São Paulo", "BR", "01000-000", "SP"),
    ("Austin", "US", "73301", "TX"),
    ("Toronto", "CA", "M5H 2N2", "ON"),
    ("Kraków", "PL", "30-001", None),
    ("Osaka", "JP", "530-0001", None),
    ("Zürich", "CH", "8001", "ZH"),
    ("Dublin", "IE", "D02 X285", None),
    ("Melbourne", "AU", "3000", "VIC"),
]
_STREETS = ["Hauptstraße", "Rue de la Paix", "Main Street", "Avenida Paulista", "Queen Street", "ul. Floriańska"]
_DOMAINS = ["example.com", "example.org", "example.net"]


@dataclass(frozen=True)
class SyntheticPerson:
    """One made-up person with an address; nothing here is a real customer."""

    first_name: str
    last_name: str
    email: str
    phone: str | None
    line1: str
    city: str
    country: str
    postal_code: str
    state: str | None

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return "".join(ch for ch in folded if ch.isalnum()) or "user"


def person(rng: random.Random, index: int) -> SyntheticPerson:
    """The ``index``-th person drawn from ``rng`` (the caller seeds it, so data is reproducible)."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    city, country, postal, state = rng.choice(_CITIES)
    email = f"{_ascii_slug(first)}.{_ascii_slug(last)}{index}@{rng.choice(_DOMAINS)}"
    return SyntheticPerson(
        first_name=first,
        last_name=last,
        email=email,
        phone=f"+1555{rng.randrange(10**6, 10**7)}",
        line1=f"{rng.randrange(1, 400)} {rng.choice(_STREETS)}",
        city=city,
        country=country,
        postal_code=postal,
        state=state,
    )


def object_id(prefix: str, rng: random.Random, length: int = 14) -> str:
    """A provider-style object id such as ``cus_NffrFeUfNV2Hib``."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return f"{prefix}_{''.join(rng.choice(alphabet) for _ in range(length))}"


# --- one population shared by the sandboxes -------------------------------------------------------------------------

#: The sandboxes' people lists, one per provider object that holds people.
Roster = Literal["stripe", "shopify", "salesforce_contact", "salesforce_lead"]
ROSTERS: tuple[Roster, ...] = ("stripe", "shopify", "salesforce_contact", "salesforce_lead")
#: The providers a person can be in; Salesforce holds them as a Contact, a Lead, or both (a converted lead).
PROVIDERS = ("stripe", "shopify", "salesforce")


class Kind(StrEnum):
    """How a person of the population shows up across the providers."""

    SINGLE = "single"  # in one provider only
    SHARED_EMAIL = "shared_email"  # in two or three providers under one email, case and whitespace varying
    PHONE_ONLY = "phone_only"  # in two providers under different emails, one phone written differently
    CHAIN = "chain"  # Stripe and Shopify share the email, Shopify and Salesforce the phone (Stripe has no phone)
    FRONT_DESK = "front_desk"  # one provider, with the shop's front-desk phone instead of their own
    SHARED_INBOX = "shared_inbox"  # one provider, with the company's info@ address instead of their own


#: Each kind's share of the population (the rest are SINGLE).
KIND_SHARES: tuple[tuple[Kind, float], ...] = (
    (Kind.SHARED_EMAIL, 0.30),
    (Kind.PHONE_ONLY, 0.06),
    (Kind.CHAIN, 0.04),
    (Kind.FRONT_DESK, 0.04),
    (Kind.SHARED_INBOX, 0.04),
)
#: The values many records share, which identity resolution's guards must not link on.
FRONT_DESK_PHONE = "13055550100"  # E.164 digits; each record writes it its own way
SHARED_INBOX_EMAIL = "info@example.com"
# NANP area codes for fictional numbers: 555-0100 to 555-0199 are reserved for fiction in every one of them.
_AREA_CODES = (
    "201", "202", "206", "212", "213", "303", "312", "404", "415", "416", "503", "512",
    "602", "604", "617", "646", "702", "713", "718", "720", "778", "801", "858", "917",
)  # fmt: skip
_NANP_COUNTRIES = frozenset({"US", "CA"})
_NANP_CITIES = [city for city in _CITIES if city[1] in _NANP_COUNTRIES]
# Stripe and Salesforce keep an email as it was typed; Shopify keeps it lower-cased.
_SALESFORCE_LEAD_SHARE, _SALESFORCE_BOTH_SHARE = 0.3, 0.1
_STRANGERS_FROM = 10_000_000


@dataclass(frozen=True)
class Member:
    """One person of the population: who they are and where they are."""

    index: int
    kind: Kind
    providers: frozenset[str]
    rosters: frozenset[Roster]
    person: SyntheticPerson
    alternate_email: str
    phone_digits: str  # the person's own phone, E.164 digits without '+'


def _member_rng(seed: int, index: int, salt: str = "") -> random.Random:
    # String seeds hash with SHA-512 inside random, the same in every process (unlike hash()).
    return random.Random(f"cdp-population/{seed}/{index}/{salt}")


def _phone_digits(index: int) -> str:
    """A distinct North American number per index: 555-01XX (fiction's range) first, other exchanges after."""
    area = _AREA_CODES[index % len(_AREA_CODES)]
    block, line = divmod(index // len(_AREA_CODES), 100)
    if block == 0:
        return f"1{area}5550{100 + line}"
    exchange = 220 + (block - 1) % 80  # 220-299: valid exchanges, none of them an N11 service code
    return f"1{area}{exchange}{line:04d}"


def _written_phone(digits: str, style: str, country: str) -> str:
    area, exchange, line = digits[1:4], digits[4:7], digits[7:]
    if style == "national" and country in _NANP_COUNTRIES:
        return f"({area}) {exchange}-{line}"
    if style == "e164":
        return f"+{digits}"
    return f"+1 {area}-{exchange}-{line}"


def _written_email(email: str, roster: Roster, rng: random.Random) -> str:
    if roster == "shopify":
        return email.lower()
    local, domain = email.split("@")
    styles = [email, email, f"{local[:1].upper()}{local[1:]}@{domain}", f"{local}@{domain.upper()}"]
    if roster == "stripe":
        styles.append(f"{email} ")
    return rng.choice(styles)


class Population:
    """People for every sandbox from one seed. ``person_at(index)`` depends only on the seed and the index, never on
    which sandbox asked first; ``member(roster, i)`` is the i-th person of a provider's list, written as that provider
    writes them (emails in varying case, phones in E.164 or national format)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._people: dict[int, Member] = {}
        self._rosters: dict[Roster, list[int]] = {roster: [] for roster in ROSTERS}
        self._scanned = 0  # people [0, _scanned) are on their rosters
        self._lock = threading.Lock()  # sandboxes of one process may ask from their server threads at once

    def at(self, index: int) -> Member:
        """The population's ``index``-th person, whatever was drawn before."""
        member = self._people.get(index)
        if member is None:
            member = self._people[index] = self._draw(index)
        return member

    def _draw(self, index: int) -> Member:
        rng = _member_rng(self.seed, index)
        draw, kind = rng.random(), Kind.SINGLE
        for candidate, share in KIND_SHARES:
            if draw < share:
                kind = candidate
                break
            draw -= share
        providers: set[str]
        if kind is Kind.CHAIN:
            providers = set(PROVIDERS)
        elif kind is Kind.SHARED_EMAIL:
            providers = set(PROVIDERS) if rng.random() < 1 / 3 else set(rng.sample(PROVIDERS, 2))
        elif kind is Kind.PHONE_ONLY:
            providers = set(rng.sample(PROVIDERS, 2))
        elif kind in (Kind.FRONT_DESK, Kind.SHARED_INBOX):
            providers = {rng.choice(["stripe", "salesforce"])}  # Shopify allows one customer per email and phone
        else:
            providers = {rng.choices(PROVIDERS, weights=(35, 35, 30))[0]}
        rosters: set[Roster] = set()
        if "stripe" in providers:
            rosters.add("stripe")
        if "shopify" in providers:
            rosters.add("shopify")
        if "salesforce" in providers:
            draw = rng.random()
            if draw < _SALESFORCE_BOTH_SHARE:
                rosters |= {"salesforce_contact", "salesforce_lead"}
            elif draw < _SALESFORCE_BOTH_SHARE + _SALESFORCE_LEAD_SHARE:
                rosters.add("salesforce_lead")
            else:
                rosters.add("salesforce_contact")
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        shared_phone = kind in (Kind.PHONE_ONLY, Kind.CHAIN, Kind.FRONT_DESK)
        city, country, postal, state = rng.choice(_NANP_CITIES if shared_phone else _CITIES)
        slug_first, slug_last = _ascii_slug(first), _ascii_slug(last)
        digits = _phone_digits(index)
        who = SyntheticPerson(
            first_name=first,
            last_name=last,
            email=f"{slug_first}.{slug_last}{index}@{rng.choice(_DOMAINS)}",
            phone=_written_phone(digits, "international", country),
            line1=f"{rng.randrange(1, 400)} {rng.choice(_STREETS)}",
            city=city,
            country=country,
            postal_code=postal,
            state=state,
        )
        alternate = f"{slug_first[:1]}{slug_last}{index}@{rng.choice(_DOMAINS)}"
        return Member(index, kind, frozenset(providers), frozenset(rosters), who, alternate, digits)

    def person_at(self, index: int) -> SyntheticPerson:
        return self.at(index).person

    def stranger(self, index: int) -> SyntheticPerson:
        """Someone on no provider's list (people that far are never reached): for a second address, an account."""
        return self.at(_STRANGERS_FROM + index).person

    def index_of(self, roster: Roster, position: int) -> int:
        """The population index of the ``position``-th person on ``roster`` (people join each list in index order)."""
        with self._lock:
            listed = self._rosters[roster]
            while position >= len(listed):
                member = self.at(self._scanned)
                for name in member.rosters:
                    self._rosters[name].append(member.index)
                self._scanned += 1
            return listed[position]

    def member(self, roster: Roster, position: int) -> SyntheticPerson:
        """The ``position``-th person of ``roster`` as that provider holds them."""
        return self.written(roster, self.index_of(roster, position))

    def written(self, roster: Roster, index: int) -> SyntheticPerson:
        """Person ``index`` as ``roster``'s provider writes them: its email and phone (None where it has none)."""
        member = self.at(index)
        rng = _member_rng(self.seed, index, roster)
        provider = "salesforce" if roster.startswith("salesforce") else roster
        email, phone = member.person.email, member.phone_digits
        has_phone = rng.random() < (0.7 if provider == "shopify" else 0.85)
        if member.kind is Kind.PHONE_ONLY:
            has_phone = True
            if provider == max(member.providers):  # the second provider knows another address of theirs
                email = member.alternate_email
        elif member.kind is Kind.CHAIN:
            has_phone = provider != "stripe"
            if provider == "salesforce":
                email = member.alternate_email
        elif member.kind is Kind.SHARED_INBOX:
            email = SHARED_INBOX_EMAIL
        style = {"shopify": "e164", "salesforce": "national"}.get(provider) or rng.choice(["international", "national"])
        written_phone = _written_phone(phone, style, member.person.country) if has_phone else None
        if member.kind is Kind.FRONT_DESK:
            written_phone = _written_phone(FRONT_DESK_PHONE, style, member.person.country)
        return replace(member.person, email=_written_email(email, roster, rng), phone=written_phone)


@functools.lru_cache(maxsize=16)
def population(seed: int) -> Population:
    """The population of ``seed``: every sandbox built from the same seed shares its people."""
    return Population(seed)
