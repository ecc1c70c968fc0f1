"""The sandboxes share one synthetic population: the same people turn up in Stripe, Shopify and Salesforce the way
real data has them (one email in varying case, one phone in varying formats, chains, shared front-desk values), and
the same on every start."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import phonenumbers
import pytest

from plugins.connectors.sandbox import SandboxOptions
from plugins.connectors.synthetic import FRONT_DESK_PHONE, SHARED_INBOX_EMAIL, Kind, population
from taps.salesforce.sandbox import SyntheticOrg
from taps.shopify.synthetic_store import SyntheticShop
from taps.stripe.sandbox import StripeState

RECORDS = 300
# The identity guards' defaults (plugins/transforms/identity.py): a value on more records than this does not link.
MAX_RECORDS_PER_EMAIL, MAX_RECORDS_PER_PHONE = 20, 10


@dataclass(frozen=True)
class PersonRecord:
    provider: str
    record_id: str
    email: str | None  # as the provider holds it
    phone: str | None


def _records(order: tuple[str, ...] = ("stripe", "shopify", "salesforce"), seed: int = 42) -> list[PersonRecord]:
    """Every person-record of the three sandboxes built from ``seed``, the sandboxes built in ``order``."""
    built: dict[str, list[PersonRecord]] = {}
    for provider in order:
        if provider == "stripe":
            state = StripeState(SandboxOptions(records=RECORDS, seed=seed))
            built[provider] = [PersonRecord("stripe", c["id"], c["email"], c["phone"]) for c in state.customers]
        elif provider == "shopify":
            shop = SyntheticShop(records=RECORDS, seed=seed)
            built[provider] = [
                PersonRecord(
                    "shopify",
                    c["id"],
                    c["defaultEmailAddress"]["emailAddress"],
                    (c["defaultPhoneNumber"] or {}).get("phoneNumber"),
                )
                for c in shop.customers
            ]
        else:
            org = SyntheticOrg(RECORDS, seed)
            built[provider] = [
                PersonRecord("salesforce", row["Id"], row["Email"], row["Phone"])
                for sobject in ("Contact", "Lead")
                for row in org.rows[sobject].values()
            ]
    return [record for provider in sorted(built) for record in built[provider]]


def _email(value: str | None) -> str | None:
    return value.strip().lower() if value else None


def _phone(value: str | None) -> str | None:
    if not value:
        return None
    number = phonenumbers.parse(value, "US")
    assert phonenumbers.is_valid_number(number), value  # every sandbox phone normalises to E.164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _overlaps(records: list[PersonRecord]) -> Counter[str]:
    """Counts per kind of overlap, found the way identity resolution finds them (normalised values, guards)."""
    by_value: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, record in enumerate(records):
        if email := _email(record.email):
            by_value[("email", email)].add(i)
        if phone := _phone(record.phone):
            by_value[("phone", phone)].add(i)
    counts: Counter[str] = Counter()
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (id_type, _value), holders in by_value.items():
        limit = MAX_RECORDS_PER_EMAIL if id_type == "email" else MAX_RECORDS_PER_PHONE
        if len(holders) > limit:
            counts[f"guarded_{id_type}_records"] += len(holders)
            continue
        providers = {records[i].provider for i in holders}
        if len(providers) >= 2:
            counts[f"{id_type}_in_{len(providers)}_providers"] += 1
            spellings = {records[i].email if id_type == "email" else records[i].phone for i in holders}
            counts[f"{id_type}_written_differently"] += len(spellings) > 1
        first, *rest = sorted(holders)
        for other in rest:
            parent[find(other)] = find(first)
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        components[find(i)].append(i)
    for members in components.values():
        providers = {records[i].provider for i in members}
        emails = {_email(records[i].email) for i in members}
        counts[f"people_in_{len(providers)}_providers"] += 1
        if len(providers) >= 2 and len(emails) > 1:
            # Linked across providers although no email is on all of them: by phone only, or a chain.
            counts["chain" if len(providers) == 3 else "phone_only"] += 1
    return counts


def test_sandboxes_share_people_across_providers_in_every_kind_of_overlap() -> None:
    counts = _overlaps(_records())
    assert counts["people_in_1_providers"] > counts["people_in_2_providers"] + counts["people_in_3_providers"]
    assert counts["people_in_2_providers"] >= 40
    assert counts["people_in_3_providers"] >= 20
    assert counts["email_in_2_providers"] >= 40
    assert counts["email_in_3_providers"] >= 10
    assert counts["email_written_differently"] >= 20  # case and whitespace vary, as in real data
    assert counts["phone_written_differently"] >= 10  # E.164, international, national
    assert counts["phone_only"] >= 5
    assert counts["chain"] >= 3
    # The front desk's phone and the info@ address are on more records than the guards allow: they must be cut.
    assert counts["guarded_phone_records"] > MAX_RECORDS_PER_PHONE
    assert counts["guarded_email_records"] > MAX_RECORDS_PER_EMAIL


def test_the_shared_values_are_the_documented_ones() -> None:
    records = _records()
    front_desk = {r.phone for r in records if _phone(r.phone) == f"+{FRONT_DESK_PHONE}"}
    inbox = {r.email for r in records if _email(r.email) == SHARED_INBOX_EMAIL}
    assert len(front_desk) >= 2  # the one number, written in more than one way
    assert inbox
    shopify = [r for r in records if r.provider == "shopify"]
    # Shopify keeps one customer per email and per phone within a store.
    assert len({_email(r.email) for r in shopify}) == len(shopify)
    phones = [_phone(r.phone) for r in shopify if r.phone]
    assert len(set(phones)) == len(phones)


def test_the_overlaps_are_the_same_on_every_start_whatever_sandbox_starts_first() -> None:
    first = _records()
    population.cache_clear()  # a new process: nothing remembered from the first build
    again = _records(order=("salesforce", "shopify", "stripe"))
    assert [(r.provider, r.email, r.phone) for r in again] == [(r.provider, r.email, r.phone) for r in first]
    assert _overlaps(again) == _overlaps(first)


def test_a_person_depends_only_on_the_seed_and_their_index() -> None:
    population.cache_clear()
    late = population(7).at(250)
    population.cache_clear()
    people = population(7)
    for index in range(250):
        people.at(index)
    assert people.at(250) == late
    assert population(8).at(250) != late


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_of_person_is_drawn(kind: Kind) -> None:
    people = population(42)
    assert any(people.at(index).kind is kind for index in range(400))
