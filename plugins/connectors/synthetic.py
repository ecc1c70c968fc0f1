"""Deterministic synthetic people for the provider sandboxes: same seed, same data; realistic, unicode-rich shapes."""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass

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
    phone: str
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
