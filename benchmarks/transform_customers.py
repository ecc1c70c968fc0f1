"""The customers transforms on Spark against the same logic in DuckDB SQL, then a 1 % incremental run.

    .venv/bin/python benchmarks/transform_customers.py                  # 1,000,000 raw records: Spark takes long
    .venv/bin/python benchmarks/transform_customers.py --records 50000  # about 30 minutes on a busy 2-CPU VM
    .venv/bin/python benchmarks/transform_customers.py --records 50000 --stages 15 --profile 30  # where time goes

1. Data: ``--records`` raw customer records (seeded, so every run lands the same) across Stripe customers, Shopify
   customers and Salesforce Contacts and Leads, in the providers' shapes (the taps' schemas; Salesforce's from the
   sandbox org's ``describe``). People overlap: the same person in two or three providers by email (case and
   whitespace varying), some by phone only (formats varying), some as chains (A-B by phone, B-C by a second email);
   some records have a second version; some values are blocked (``test@example.com``) or invalid, and a few phones
   and inboxes are shared by more records than the guards allow. They land through the real target-s3raw,
   in-process (registry schemas registered, gzip NDJSON in the raw layout).
2. Spark: ``run_transforms(tables=["customer_records", "customers"], full_refresh=True)`` on a fresh processed zone
   (``local[*]``); the session's start-up is timed apart from the transform.
3. DuckDB, in the same process (before Spark, so its figure stands if a long Spark run is stopped), on the same raw
   files: the same steps in SQL (read the gzip NDJSON with explicit columns; emails trimmed, lower-cased and
   syntax-checked; phones to E.164 by the transforms' own phonenumbers function through a vectorised Arrow UDF;
   names NFC; countries alpha-2 from the transforms' own lookup; the latest version per record; identity resolution
   as connected components by min-label propagation until no label changes, with the same guards; survivorship by
   most recent non-null; consent; one row per customer; Parquet out). The two must agree on the customers, the
   grouping of records into customers and the customer ids: any difference is printed.
4. Incremental: 1 % more records land (new people, new versions of existing records, records that join two existing
   profiles) and ``run_transforms`` runs incrementally; the grouping is checked again against DuckDB over all files.

Prints the wall and CPU seconds of each step and the ratios Spark/DuckDB (goal <= 3x) and incremental/full (goal
< 10 %).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import random
import resource
import sys
import tempfile
import time
import unicodedata
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TENANT = "bench"
DEFAULT_REGION = "US"
TABLES = ["customer_records", "customers"]
LANDED_AT = datetime(2026, 11, 1, tzinfo=UTC)
UPDATED_AT = datetime(2026, 11, 15, tzinfo=UTC)

# -- the people ------------------------------------------------------------------------------------------------------

FIRST = ["Ana", "Björn", "Chloé", "Dmitri", "Émile", "Fatima", "Giulia", "Hiroshi", "Ingrid", "José", "Kwame", "Léa",
         "Mateo", "Nadia", "Olúmìdé", "Priya", "Renée", "Søren", "Tomás", "Zoë", "李", "Анна"]  # fmt: skip
LAST = ["Andersson", "Bianchi", "Çelik", "Dubois", "Fernández", "García", "Jørgensen", "López", "Müller",
        "Nguyễn", "O'Brien", "Petrović", "Schmidt", "Tanaka", "Wójcik", "王", "Смирнов"]  # fmt: skip
# (country as providers write it, ISO alpha-2, city, national number maker, international prefix)
PLACES = [
    ("US", "United States", "New York", "NY", "10001"),
    ("US", "USA", "Austin", "TX", "73301"),
    ("GB", "United Kingdom", "London", None, "EC1A 1BB"),
    ("FR", "France", "Lyon", None, "69001"),
    ("DE", "Germany", "Berlin", None, "10115"),
    ("CA", "Canada", "Toronto", "ON", "M5H 2N2"),
]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example"]
SHOPIFY_STATES = ["SUBSCRIBED", "NOT_SUBSCRIBED", "UNSUBSCRIBED", "PENDING", None]


def ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return "".join(ch for ch in folded if ch.isalnum()) or "user"


def national_number(rng: random.Random, country: str) -> str:
    """Digits of a number phonenumbers takes as valid in ``country`` (no leading trunk 0)."""
    if country in ("US", "CA"):
        area = rng.choice(["212", "415", "617", "312", "206"] if country == "US" else ["416", "647", "604"])
        return f"{area}{rng.randrange(200, 1000)}{rng.randrange(0, 10_000):04d}"
    if country == "GB":
        return f"20{rng.randrange(7000, 8000)}{rng.randrange(0, 10_000):04d}"
    if country == "FR":
        return f"6{rng.randrange(10_000_000, 100_000_000)}"
    return f"30{rng.randrange(1_000_000, 10_000_000)}{rng.randrange(0, 10)}"  # DE, Berlin


CALLING_CODES = {"US": "1", "CA": "1", "GB": "44", "FR": "33", "DE": "49"}


def phone_as_written(rng: random.Random, country: str, digits: str, has_country: bool) -> str:
    """The same number in one of the ways people and providers write it; national forms only where the record
    says its country (the transforms read those in the record's country)."""
    code = CALLING_CODES[country]
    forms = [f"+{code}{digits}", f"+{code} {digits[:3]} {digits[3:6]} {digits[6:]}", f"00{code} {digits}"]
    if has_country:
        if country in ("US", "CA"):
            forms += [f"({digits[:3]}) {digits[3:6]}-{digits[6:]}", f"{digits[:3]}.{digits[3:6]}.{digits[6:]}"]
        else:
            forms += [f"0{digits}", f"0{digits[:1]} {digits[1:5]} {digits[5:]}"]
    return rng.choice(forms)


def email_as_written(rng: random.Random, address: str) -> str:
    """Case and whitespace as sources vary them."""
    style = rng.randrange(4)
    if style == 1:
        address = address.upper()
    elif style == 2:
        address = address.capitalize()
    return f"  {address} " if rng.random() < 0.3 else address


@dataclass
class Person:
    index: int
    first: str
    last: str
    country: str
    country_written: str
    city: str
    state: str | None
    postal: str
    emails: list[str]
    phone: str  # national digits


@dataclass
class Record:
    """One raw record: its provider stream, id and the fields the builders need."""

    provider: str  # stripe, shopify, salesforce
    stream: str  # customers, Contact, Lead
    record_id: str
    person: Person
    email: str | None
    phone: str | None
    created: datetime
    updated: datetime
    extras: dict[str, Any] = field(default_factory=dict)


class Generator:
    """Deterministic people and their records; ``records()`` yields raw records until the count is reached."""

    def __init__(self, seed: int, total: int) -> None:
        self.rng = random.Random(seed)
        self.people: list[Person] = []
        self.landed: list[Record] = []  # the first version of every record, for updates and merges
        self.counters = {"stripe": 0, "shopify": 0, "Contact": 0, "Lead": 0}
        # Shared values, each in about twice as many records as the guards allow (20 per email, 10 per phone).
        self.shared_inboxes = [f"info@shop{k}.example" for k in range(max(1, total // 4000))]
        self.shared_phones = [national_number(random.Random(seed + k), "US") for k in range(max(1, total // 2000))]

    def person(self) -> Person:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if rng.random() < 0.2:  # decomposed accents: the transforms compose them (NFC)
            first, last = unicodedata.normalize("NFD", first), unicodedata.normalize("NFD", last)
        country, written, city, state, postal = rng.choice(PLACES)
        index = len(self.people)
        slug = f"{ascii_slug(first)}.{ascii_slug(last)}{index}"
        someone = Person(
            index, first, last, country, written, city, state, postal,
            [f"{slug}@{rng.choice(DOMAINS)}", f"{slug}.work@{rng.choice(DOMAINS)}"],
            national_number(rng, country),
        )  # fmt: skip
        self.people.append(someone)
        return someone

    def new_id(self, stream: str) -> str:
        self.counters[stream] += 1
        n = self.counters[stream]
        if stream == "stripe":
            return f"cus_B{n:013d}"
        if stream == "shopify":
            return f"gid://shopify/Customer/{7_000_000_000 + n}"
        prefix = "003" if stream == "Contact" else "00Q"
        return f"{prefix}Bm{n:013d}"

    def record(self, someone: Person, slot: str, email: str | None, phone: str | None, when: datetime) -> Record:
        rng = self.rng
        provider, stream = {
            "stripe": ("stripe", "customers"),
            "shopify": ("shopify", "customers"),
            "Contact": ("salesforce", "Contact"),
            "Lead": ("salesforce", "Lead"),
        }[slot]
        noise = rng.random()
        if email is not None and noise < 0.01:
            email = "test@example.com"  # a placeholder: blocked
        elif email is not None and noise < 0.02:
            email = email.replace("@", " at ")  # invalid syntax: null after normalisation
        elif noise < 0.025:
            email = rng.choice(self.shared_inboxes)  # a shared inbox, in more records than allowed
        if phone is not None and rng.random() < 0.01:
            phone = "000-000-0000"
        elif rng.random() < 0.01:
            phone = f"+1{rng.choice(self.shared_phones)}"  # a front desk, in more records than allowed
        created = when - timedelta(days=rng.randrange(1, 900), seconds=rng.randrange(86_400))
        return Record(provider, stream, self.new_id(slot), someone, email, phone, created, when)

    def people_records(self, when: datetime) -> list[Record]:
        """The records of one new person: one, two or three providers, linked by email, phone or as a chain."""
        rng = self.rng
        someone = self.person()
        draw = rng.random()
        count = 1 if draw < 0.5 else 2 if draw < 0.85 else 3
        slots = rng.sample(["stripe", "shopify", "salesforce"], count)
        slots = [("Contact" if rng.random() < 0.7 else "Lead") if s == "salesforce" else s for s in slots]
        home, work = someone.emails
        has_country = True
        phone = phone_as_written(rng, someone.country, someone.phone, has_country)
        mode = rng.random()
        out = []
        for position, slot in enumerate(slots):
            phone = phone_as_written(rng, someone.country, someone.phone, has_country)
            if count == 1 or mode < 0.7:  # linked by email; a phone now and then
                email, number = email_as_written(rng, home), phone if rng.random() < 0.5 else None
            elif mode < 0.9 or count == 2:  # phone only: the second record has another email
                email = email_as_written(rng, home if position == 0 else work)
                number = phone
            else:  # a chain: A (home, phone) - B (phone, work) - C (work)
                email = email_as_written(rng, home if position == 0 else work)
                number = phone if position < 2 else None
            out.append(self.record(someone, slot, email, number, when))
        return out

    def initial(self, total: int) -> Iterator[Record]:
        """``total`` raw records: people's first versions, about 5 % of them followed by a second version."""
        made = 0
        while made < total:
            for record in self.people_records(LANDED_AT):
                if made >= total:
                    return
                self.landed.append(record)
                yield record
                made += 1
                if made < total and self.rng.random() < 0.05:
                    yield self.updated(record, LANDED_AT + timedelta(hours=self.rng.randrange(1, 200)))
                    made += 1

    def updated(self, record: Record, when: datetime) -> Record:
        """A later version of ``record``: the city changed, the email case changed."""
        rng = self.rng
        email = record.email.swapcase() if record.email is not None and rng.random() < 0.5 else record.email
        return Record(record.provider, record.stream, record.record_id, record.person, email, record.phone,
                      record.created, when, {"city": rng.choice(PLACES)[2]})  # fmt: skip

    def increment(self, total: int) -> Iterator[Record]:
        """``total`` more records: 40 % new people, 40 % new versions of landed records, 20 % records that join two
        existing people (the email of one, the phone of another)."""
        rng = self.rng
        made = 0
        while made < total:
            draw = rng.random()
            if draw < 0.4:
                batch = self.people_records(UPDATED_AT)
            elif draw < 0.8:
                batch = [self.updated(rng.choice(self.landed), UPDATED_AT)]
            else:
                one, other = rng.choice(self.landed).person, rng.choice(self.landed).person
                slot = rng.choice(["stripe", "shopify", "Contact", "Lead"])
                number = phone_as_written(rng, other.country, other.phone, True)
                joined = Record(*self._slot(slot), self.new_id(slot), one, one.emails[0], number,
                                UPDATED_AT - timedelta(days=1), UPDATED_AT)  # fmt: skip
                batch = [joined]
            for record in batch[: total - made]:
                yield record
                made += 1

    @staticmethod
    def _slot(slot: str) -> tuple[str, str]:
        return {"stripe": ("stripe", "customers"), "shopify": ("shopify", "customers")}.get(slot, ("salesforce", slot))


# -- the providers' shapes -------------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def stripe_customer(r: Record) -> dict[str, Any]:
    p = r.person
    return {
        "id": r.record_id,
        "object": "customer",
        "name": f"{p.first} {p.last}",
        "email": r.email,
        "phone": r.phone,
        "created": int(r.created.timestamp()),
        "balance": 0,
        "currency": "usd",
        "delinquent": False,
        "livemode": False,
        "address": {
            "line1": f"{p.index % 400 + 1} Main Street",
            "line2": None,
            "city": r.extras.get("city", p.city),
            "state": p.state,
            "postal_code": p.postal,
            "country": p.country,
        },
        "metadata": {"crm_id": f"crm_{p.index}"},
        "preferred_locales": ["en"],
    }


def shopify_customer(r: Record, rng: random.Random) -> dict[str, Any]:
    p = r.person
    number = int(r.record_id.rsplit("/", 1)[1])
    return {
        "id": r.record_id,
        "legacyResourceId": str(number),
        "firstName": p.first,
        "lastName": p.last,
        "displayName": f"{p.first} {p.last}",
        "defaultEmailAddress": None
        if r.email is None
        else {"emailAddress": r.email, "marketingState": rng.choice(SHOPIFY_STATES)},
        "defaultPhoneNumber": None
        if r.phone is None
        else {"phoneNumber": r.phone, "marketingState": rng.choice(SHOPIFY_STATES)},
        "defaultAddress": {
            "id": f"gid://shopify/MailingAddress/{number}",
            "address1": f"{p.index % 400 + 1} High Street",
            "city": r.extras.get("city", p.city),
            "country": p.country_written,
            "countryCodeV2": p.country,
            "provinceCode": p.state,
            "zip": p.postal,
            "phone": None,
        },
        "state": "ENABLED",
        "tags": ["vip"] if p.index % 17 == 0 else [],
        "verifiedEmail": r.email is not None,
        "dataSaleOptOut": rng.random() < 0.1,
        "createdAt": iso(r.created),
        "updatedAt": iso(r.updated),
        "metafields": [],
    }


def salesforce_record(r: Record, rng: random.Random) -> dict[str, Any]:
    p = r.person
    prefix = "Mailing" if r.stream == "Contact" else ""
    record: dict[str, Any] = {
        "Id": r.record_id,
        "IsDeleted": False,
        "CreatedDate": iso(r.created),
        "CreatedById": "005Bm0000000001AAA",
        "LastModifiedDate": iso(r.updated),
        "SystemModstamp": iso(r.updated),
        "OwnerId": "005Bm0000000001AAA",
        "FirstName": p.first,
        "LastName": p.last,
        "Name": f"{p.first} {p.last}",
        "Email": r.email,
        "Phone": r.phone,
        f"{prefix}Street": f"{p.index % 400 + 1} Market Street",
        f"{prefix}City": r.extras.get("city", p.city),
        f"{prefix}State": p.state,
        f"{prefix}PostalCode": p.postal,
        f"{prefix}Country": p.country_written,
        "LeadSource": "Web",
    }
    if r.stream == "Contact":
        record["HasOptedOutOfEmail"] = rng.random() < 0.1
    else:
        record.update(Company="Example Ltd", Status="Open", IsConverted=False, HasOptedOutOfEmail=rng.random() < 0.1)
    return record


def salesforce_schemas() -> dict[str, dict[str, Any]]:
    """tap-salesforce's schemas of Contact and Lead, from the sandbox org's ``describe`` (as at discovery); a real
    org's Lead also has ``Phone`` and ``HasOptedOutOfEmail``, which the sandbox's subset leaves out."""
    from taps.salesforce.client import describe_schema
    from taps.salesforce.sandbox import OBJECT_FIELDS, FieldSpec

    lead = [*OBJECT_FIELDS["Lead"], FieldSpec("Phone", "phone", length=40),
            FieldSpec("HasOptedOutOfEmail", "boolean", nillable=False)]  # fmt: skip
    return {
        "Contact": describe_schema({"fields": [spec.describe() for spec in OBJECT_FIELDS["Contact"]]}),
        "Lead": describe_schema({"fields": [spec.describe() for spec in lead]}),
    }


def tap_schema(provider: str, stream: str) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((REPO_ROOT / "taps" / provider / "schemas" / f"{stream}.json").read_bytes())
    return schema


# -- landing ---------------------------------------------------------------------------------------------------------


def land(base: Path, records: Iterator[Record], seed: int, extracted: datetime) -> dict[str, int]:
    """Land ``records`` through target-s3raw, in-process, one run per provider (as one tap run each would)."""
    from targets.s3raw.target import TargetS3Raw

    rng = random.Random(seed)
    by_provider: dict[str, list[bytes]] = {"stripe": [], "shopify": [], "salesforce": []}
    keys = {"customers": "id", "Contact": "Id", "Lead": "Id"}
    for record in records:
        if record.provider == "stripe":
            body = stripe_customer(record)
        elif record.provider == "shopify":
            body = shopify_customer(record, rng)
        else:
            body = salesforce_record(record, rng)
        # Stripe's version of a customer is when it was extracted (the transforms' updated_at for Stripe).
        moment = record.updated if record.provider == "stripe" else extracted
        message = {"type": "RECORD", "stream": record.stream, "record": body, "time_extracted": moment.isoformat()}
        by_provider[record.provider].append(orjson.dumps(message))
    schemas = {("stripe", "customers"): tap_schema("stripe", "customers"),
               ("shopify", "customers"): tap_schema("shopify", "customers"),
               **{("salesforce", name): schema for name, schema in salesforce_schemas().items()}}  # fmt: skip
    counts = {}
    for provider, lines in by_provider.items():
        streams = [stream for (owner, stream) in schemas if owner == provider]
        head = [
            orjson.dumps({"type": "SCHEMA", "stream": s, "schema": schemas[(provider, s)], "key_properties": [keys[s]]})
            for s in streams
        ]
        text = b"\n".join([*head, *lines]) + b"\n"
        config = {"raw_url": str(base / "raw"), "dlq_url": str(base / "dlq"), "registry_url": str(base / "registry"),
                  "tenant": TENANT, "provider": provider}  # fmt: skip
        # The target reads bytes (targets/s3raw/reader.py), whatever the SDK's hint says.
        TargetS3Raw(config=config).listen(io.BytesIO(text))  # type: ignore[arg-type]
        counts[provider] = len(lines)
    return counts


# -- Spark -----------------------------------------------------------------------------------------------------------


def run_spark(base: Path, *, full_refresh: bool) -> tuple[float, Any]:
    from plugins.transforms.run import TransformSettings
    from plugins.transforms.runner import run_transforms

    started = time.perf_counter()
    summary = run_transforms(
        tenants=[TENANT],
        tables=TABLES,
        full_refresh=full_refresh,
        raw_url=str(base / "raw"),
        processed_url=str(base / "processed"),
        dlq_url=str(base / "dlq"),
        registry_url=str(base / "registry"),
        settings=TransformSettings(default_region=DEFAULT_REGION),
    )
    seconds = time.perf_counter() - started
    if not summary.ok:
        raise SystemExit(f"the Spark run failed: {[t.as_dict() for t in summary.tables if t.error]}")
    return seconds, summary


def profiled(function: Any, top: int) -> Any:
    """``function()`` under cProfile; prints the project's calls that took the most wall time. On the driver every
    Spark action blocks, so each line is the time of the jobs that call started (count, collect, write...)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    result = profile.runcall(function)
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, name), (_calls, _primitive, _own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        relative = path.removeprefix(str(REPO_ROOT) + "/")
        if relative.startswith(("plugins/transforms/", "transforms/")):
            rows.append((cumulative, f"{relative}:{line} {name}"))
    rows.sort(reverse=True)
    print(f"  the {top} project calls with the most wall time (cumulative, nested calls overlap):")
    for seconds, where in rows[:top]:
        print(f"  {seconds:8.1f} s  {where}")
    return result


def spark_table_files(base: Path, table: str) -> list[str]:
    """The live Parquet files of a processed table, as local paths."""
    from plugins.transforms.catalog import ProcessedZone, table_identifier
    from plugins.transforms.commit import live_data_files

    catalog = ProcessedZone.resolve(str(base / "processed"), None).open()
    files = live_data_files(catalog.load_table(table_identifier(TENANT, table)))
    return [path.removeprefix("file://") for path in files]


def spark_stages(top: int) -> list[str]:
    """The slowest stages of the session so far, from Spark's UI REST API (empty when the UI is off)."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    url = session.sparkContext.uiWebUrl if session is not None else None
    if not url:
        return []
    app = session.sparkContext.applicationId  # type: ignore[union-attr]
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/stages?status=complete") as response:
        stages = orjson.loads(response.read())
    stages.sort(key=lambda s: -int(s.get("executorRunTime", 0)))
    total = sum(int(s.get("executorRunTime", 0)) for s in stages) / 1000
    tasks = sum(int(s.get("numTasks", 0)) for s in stages)
    head = f"  Spark so far: {len(stages)} stages, {tasks} tasks, {total:.1f} s of task time; the slowest:"
    return [
        head,
        *[
            f"  stage {s['stageId']:>4}  {s['executorRunTime'] / 1000:7.1f} s task time  {s['numTasks']:>4} tasks  "
            f"{s['name'][:80]}"
            for s in stages[:top]
        ],
    ]


def jvm_peak_rss_mb() -> float | None:
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    try:
        pid = session.sparkContext._gateway.proc.pid  # type: ignore[union-attr]
        return peak_rss_mb(f"/proc/{pid}/status")
    except (AttributeError, OSError):
        return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant, with the children each has reaped (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    own: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        own[child] = sum(int(value) for value in fields[11:15]) / ticks  # utime, stime, cutime, cstime
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += own.get(current, 0.0)
        pending.extend(children.get(current, []))
    return total


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spark_cpu_seconds() -> float:
    """This process's CPU (the driver's Python side) plus the Spark JVM's and its Python workers'."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    jvm = session.sparkContext._gateway.proc.pid if session is not None else None  # type: ignore[union-attr]
    return process_cpu_seconds() + (tree_cpu_seconds(jvm) if jvm is not None else 0.0)


def reset_peak_rss() -> None:
    """Start this process's peak RSS afresh (Linux: ``clear_refs`` 5), so a later reading is one step's peak."""
    # Not Linux, or not allowed: the reading is then the process's peak so far.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb(status: str = "/proc/self/status") -> float | None:
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- DuckDB ----------------------------------------------------------------------------------------------------------

RAW_COLUMNS = {
    ("stripe", "customers"): {
        "id": "VARCHAR", "email": "VARCHAR", "phone": "VARCHAR", "name": "VARCHAR", "created": "BIGINT",
        "metadata": "JSON", "_sdc_extracted_at": "VARCHAR",
        "address": "STRUCT(line1 VARCHAR, line2 VARCHAR, city VARCHAR, state VARCHAR, postal_code VARCHAR, "
                   "country VARCHAR)",
    },
    ("shopify", "customers"): {
        "id": "VARCHAR", "firstName": "VARCHAR", "lastName": "VARCHAR", "displayName": "VARCHAR",
        "defaultEmailAddress": "STRUCT(emailAddress VARCHAR, marketingState VARCHAR)",
        "defaultPhoneNumber": "STRUCT(phoneNumber VARCHAR, marketingState VARCHAR)",
        "defaultAddress": "STRUCT(address1 VARCHAR, address2 VARCHAR, city VARCHAR, country VARCHAR, "
                          "countryCodeV2 VARCHAR, province VARCHAR, provinceCode VARCHAR, zip VARCHAR, phone VARCHAR)",
        "dataSaleOptOut": "BOOLEAN", "createdAt": "VARCHAR", "updatedAt": "VARCHAR", "metafields": "JSON",
    },
    ("salesforce", "Contact"): {
        "Id": "VARCHAR", "FirstName": "VARCHAR", "LastName": "VARCHAR", "Name": "VARCHAR", "Email": "VARCHAR",
        "Phone": "VARCHAR", "MailingStreet": "VARCHAR", "MailingCity": "VARCHAR", "MailingState": "VARCHAR",
        "MailingPostalCode": "VARCHAR", "MailingCountry": "VARCHAR", "HasOptedOutOfEmail": "BOOLEAN",
        "CreatedDate": "VARCHAR", "SystemModstamp": "VARCHAR",
    },
    ("salesforce", "Lead"): {
        "Id": "VARCHAR", "FirstName": "VARCHAR", "LastName": "VARCHAR", "Name": "VARCHAR", "Email": "VARCHAR",
        "Phone": "VARCHAR", "Street": "VARCHAR", "City": "VARCHAR", "State": "VARCHAR", "PostalCode": "VARCHAR",
        "Country": "VARCHAR", "HasOptedOutOfEmail": "BOOLEAN", "CreatedDate": "VARCHAR", "SystemModstamp": "VARCHAR",
    },
}  # fmt: skip


def e164_udf(values: Any, regions: Any) -> Any:
    """Arrow batch -> E.164 or null, through the transforms' own phonenumbers function (the same logic)."""
    import pyarrow as pa

    from plugins.transforms.normalize import _phone_batches

    checked = _phone_batches(values.to_pandas(), regions.to_pandas())
    return pa.array(checked["value"], type=pa.string())


def nfc(column: str) -> str:
    return f"nullif(nfc_normalize(trim({column})), '')"


def sql_list(values: Any) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in sorted(values))


@dataclass
class DuckResult:
    seconds: float
    customers: int
    records: int
    rounds: int
    cut: dict[str, int]
    peak_rss_mb: float | None


def duckdb_reference(base: Path, out: Path, threads: int) -> tuple[DuckResult, Any]:
    """The transforms' logic in DuckDB SQL over the raw files; returns its result and the open connection (tables
    ``records``, ``links`` and ``customers`` stay there for the comparison)."""
    import duckdb
    from duckdb.func import FunctionNullHandling, PythonUDFType

    from plugins.core.storage import ObjectStore
    from plugins.transforms.identity import IdentitySettings
    from plugins.transforms.normalize import country_lookup_rows
    from plugins.transforms.raw_reader import list_raw_files

    settings = IdentitySettings()
    raw = ObjectStore(str(base / "raw"))
    con = duckdb.connect(config={"threads": threads})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    reset_peak_rss()
    started = time.perf_counter()
    con.create_function(
        "e164",
        e164_udf,
        ["VARCHAR", "VARCHAR"],
        "VARCHAR",
        type=PythonUDFType.ARROW,
        null_handling=FunctionNullHandling.SPECIAL,  # the phone function maps nulls itself
        side_effects=False,
    )
    con.execute("CREATE TABLE country_lookup (country_key VARCHAR, alpha_2 VARCHAR)")
    con.executemany("INSERT INTO country_lookup VALUES (?, ?)", list(country_lookup_rows()))

    def source(provider: str, stream: str) -> str:
        files = [str(base / "raw" / f.key) for f in list_raw_files(raw, TENANT, provider, stream)]
        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in RAW_COLUMNS[(provider, stream)].items()) + "}"
        return (
            f"read_json([{sql_list(files)}], format='newline_delimited', compression='gzip', columns={columns}, "
            "filename=true, hive_partitioning=false)"
        )

    ts = "CAST(CAST({} AS TIMESTAMPTZ) AS TIMESTAMP)"
    shopify_state = "CASE WHEN {0} IS NULL THEN NULL WHEN upper({0}) = 'SUBSCRIBED' THEN 'granted' ELSE 'denied' END"
    # One row per source record version, in the table's columns (email, phone and country still raw).
    con.execute(f"""
    CREATE TEMP TABLE versions AS
    SELECT 'stripe:customer:' || id AS record_id, 'stripe/customers' AS source, 'stripe_customer' AS provider_id_type,
           id AS provider_id, email AS email_raw, phone AS phone_raw, NULL::VARCHAR AS first_name,
           NULL::VARCHAR AS last_name, {nfc("name")} AS full_name, {nfc("address.line1")} AS address_line1,
           {nfc("address.line2")} AS address_line2, {nfc("address.city")} AS city, {nfc("address.state")} AS region,
           trim(address.postal_code) AS postal_code, address.country AS country_raw,
           NULL::VARCHAR AS consent_email, NULL::TIMESTAMP AS consent_email_at, NULL::VARCHAR AS consent_sms,
           NULL::TIMESTAMP AS consent_sms_at, NULL::VARCHAR AS consent_ads, NULL::TIMESTAMP AS consent_ads_at,
           CASE WHEN trim(metadata::VARCHAR) NOT IN ('{{}}', '') THEN metadata::VARCHAR END AS custom_fields,
           CAST(to_timestamp(created) AS TIMESTAMP) AS created_at,
           coalesce({ts.format("_sdc_extracted_at")}, CAST(to_timestamp(created) AS TIMESTAMP)) AS updated_at,
           filename AS source_file
    FROM {source("stripe", "customers")}
    UNION ALL
    SELECT 'shopify:customer:' || id, 'shopify/customers', 'shopify_customer', id,
           defaultEmailAddress.emailAddress, coalesce(defaultPhoneNumber.phoneNumber, defaultAddress.phone),
           {nfc("firstName")}, {nfc("lastName")},
           coalesce({nfc("displayName")}, nullif(concat_ws(' ', {nfc("firstName")}, {nfc("lastName")}), '')),
           {nfc("defaultAddress.address1")}, {nfc("defaultAddress.address2")}, {nfc("defaultAddress.city")},
           {nfc("coalesce(defaultAddress.provinceCode, defaultAddress.province)")}, trim(defaultAddress.zip),
           coalesce(defaultAddress.countryCodeV2, defaultAddress.country),
           {shopify_state.format("defaultEmailAddress.marketingState")}, {ts.format("updatedAt")},
           {shopify_state.format("defaultPhoneNumber.marketingState")}, {ts.format("updatedAt")},
           CASE WHEN dataSaleOptOut THEN 'denied' END, {ts.format("updatedAt")},
           CASE WHEN json_array_length(metafields) > 0 THEN metafields::VARCHAR END,
           {ts.format("createdAt")}, coalesce({ts.format("updatedAt")}, {ts.format("createdAt")}), filename
    FROM {source("shopify", "customers")}
    UNION ALL
    SELECT 'salesforce:contact:' || Id, 'salesforce/Contact', 'salesforce_contact', Id, Email, Phone,
           {nfc("FirstName")}, {nfc("LastName")},
           coalesce({nfc("Name")}, nullif(concat_ws(' ', {nfc("FirstName")}, {nfc("LastName")}), '')),
           {nfc("MailingStreet")}, NULL, {nfc("MailingCity")}, {nfc("MailingState")}, trim(MailingPostalCode),
           MailingCountry,
           CASE WHEN HasOptedOutOfEmail THEN 'denied' END, {ts.format("SystemModstamp")}, NULL, NULL, NULL, NULL,
           NULL, {ts.format("CreatedDate")}, coalesce({ts.format("SystemModstamp")}, {ts.format("CreatedDate")}),
           filename
    FROM {source("salesforce", "Contact")}
    UNION ALL
    SELECT 'salesforce:lead:' || Id, 'salesforce/Lead', 'salesforce_lead', Id, Email, Phone,
           {nfc("FirstName")}, {nfc("LastName")},
           coalesce({nfc("Name")}, nullif(concat_ws(' ', {nfc("FirstName")}, {nfc("LastName")}), '')),
           {nfc("Street")}, NULL, {nfc("City")}, {nfc("State")}, trim(PostalCode), Country,
           CASE WHEN HasOptedOutOfEmail THEN 'denied' END, {ts.format("SystemModstamp")}, NULL, NULL, NULL, NULL,
           NULL, {ts.format("CreatedDate")}, coalesce({ts.format("SystemModstamp")}, {ts.format("CreatedDate")}),
           filename
    FROM {source("salesforce", "Lead")}
    """)
    # The latest version per record, then normalisation: only the latest versions are normalised, as in Spark.
    email_ok = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    con.execute("""
    CREATE TEMP TABLE latest AS
    SELECT * FROM versions
    QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY updated_at DESC NULLS LAST,
                                                                source_file DESC NULLS LAST) = 1
    """)
    con.execute(f"""
    CREATE TABLE records AS
    WITH located AS (
        SELECT l.*, c.alpha_2 AS country, lower(nullif(trim(email_raw), '')) AS email_trimmed
        FROM latest l LEFT JOIN country_lookup c ON c.country_key = upper(nullif(trim(l.country_raw), ''))
    )
    SELECT * EXCLUDE (email_raw, phone_raw, country_raw, email_trimmed),
           CASE WHEN regexp_matches(email_trimmed, '{email_ok}') THEN email_trimmed END AS email,
           e164(nullif(trim(phone_raw), ''), upper(coalesce(country, '{DEFAULT_REGION}'))) AS phone
    FROM located
    """)
    con.execute(f"COPY records TO '{out / 'customer_records.parquet'}' (FORMAT parquet)")

    # Identity: one row per (identifier, record), seen at creation and at the latest update.
    blocked = sql_list(settings.blocked_values)
    shared_limits = " ".join(
        f"WHEN '{id_type}' THEN {rules.max_records_per_value}"
        for id_type, rules in settings.types.items()
        if rules.max_records_per_value is not None
    )
    patterns = " OR ".join(
        f"(id_type = '{id_type}' AND regexp_matches(lower(trim(id_value)), '{rules.blocked_pattern}'))"
        for id_type, rules in settings.types.items()
        if rules.blocked_pattern
    )
    con.execute(f"""
    CREATE TABLE links AS
    WITH observed AS (
        SELECT record_id, source, unnest([{{'t': provider_id_type, 'v': provider_id}}, {{'t': 'email', 'v': email}},
                                          {{'t': 'phone', 'v': phone}}]) AS i,
               coalesce(created_at, updated_at) AS first_seen, coalesce(updated_at, created_at) AS last_seen
        FROM records
    ), rows AS (
        SELECT i.t AS id_type, i.v AS id_value, record_id, source, min(first_seen) AS first_seen,
               max(last_seen) AS last_seen
        FROM observed WHERE i.v IS NOT NULL GROUP BY ALL
    ), counted AS (
        -- One row per (identifier, record): the rows of a value are its distinct records.
        SELECT *, count(*) OVER (PARTITION BY id_type, id_value) AS records FROM rows
    )
    SELECT *, id_type || ':' || id_value AS node,
           CASE WHEN lower(trim(id_value)) IN ({blocked}) {f"OR {patterns}" if patterns else ""} THEN 'blocked_value'
                WHEN records > (CASE id_type {shared_limits} ELSE NULL END) THEN 'shared_value' END AS cut
    FROM counted
    """)
    rounds = components(con)
    caps = " ".join(
        f"WHEN '{id_type}' THEN {rules.max_values_per_profile}"
        for id_type, rules in settings.types.items()
        if rules.max_values_per_profile is not None
    )
    capped = con.execute(f"""
    CREATE OR REPLACE TEMP TABLE capped AS
    SELECT id_type, id_value FROM (
        SELECT component, id_type, id_value, max(last_seen) AS last_seen, count(DISTINCT record_id) AS records
        FROM links JOIN labels USING (node) WHERE cut IS NULL GROUP BY ALL
    ) QUALIFY row_number() OVER (PARTITION BY component, id_type
                                 ORDER BY last_seen DESC NULLS LAST, records DESC, id_value)
              > (CASE id_type {caps} ELSE NULL END);
    SELECT count(*) FROM capped
    """).fetchone()
    if capped and capped[0]:
        con.execute("""
        UPDATE links SET cut = 'profile_cap' FROM capped
        WHERE links.cut IS NULL AND links.id_type = capped.id_type AND links.id_value = capped.id_value
        """)
        rounds += components(con)
    # Each record joins the component of its smallest linking identifier (a record linking nothing is its own).
    con.execute("""
    CREATE TABLE placed AS
    WITH anchors AS (SELECT record_id, min(node) AS anchor FROM links WHERE cut IS NULL GROUP BY record_id)
    SELECT links.*, coalesce(labels.component, coalesce(anchors.anchor, 'record:' || links.record_id)) AS component
    FROM links LEFT JOIN anchors USING (record_id) LEFT JOIN labels ON labels.node = anchors.anchor
    """)
    con.execute("""
    CREATE TABLE identity_map AS
    WITH births AS (
        SELECT component, coalesce(min({'at': first_seen, 'node': node}) FILTER (WHERE cut IS NULL),
                                   {'at': min(first_seen), 'node': min(component)}) AS birth
        FROM placed GROUP BY component
    )
    SELECT placed.* EXCLUDE (component, records), 'cus_' || sha256(births.birth.node)[1:24] AS customer_id,
           cut IS NULL AS linked, cut AS cut_rule
    FROM placed JOIN births USING (component)
    """)
    con.execute(f"COPY identity_map TO '{out / 'identity_map.parquet'}' (FORMAT parquet)")
    provider_lists = ", ".join(
        f"list_sort(list_distinct(list(id_value) FILTER (WHERE id_type = '{t}'))) AS {t}_ids"
        for t in ("stripe_customer", "shopify_customer", "salesforce_contact", "salesforce_lead")
    )
    newest = "{'r': -epoch_us(updated_at), 's': source}"
    picks = ", ".join(
        f"arg_min({f}, {{'r': -epoch_us(updated_at), 's': source, 'v': {f}}}) FILTER (WHERE {f} IS NOT NULL) AS {f}"
        for f in ("email", "phone", "country")
    )
    consent_picks = ", ".join(
        f"arg_max({{'state': consent_{c}, 'at': consent_{c}_at}}, "
        f"{{'at': consent_{c}_at, 'refused': consent_{c} = 'denied', 's': source}}) "
        f"FILTER (WHERE consent_{c} IS NOT NULL AND consent_{c}_at IS NOT NULL) AS c_{c}"
        for c in ("email", "sms", "ads")
    )
    consent_columns = ", ".join(
        f"coalesce(c_{c}.state, 'unknown') AS consent_{c}, c_{c}.at AS consent_{c}_at" for c in ("email", "sms", "ads")
    )
    con.execute(f"""
    CREATE TABLE customers AS
    WITH identifiers AS (
        SELECT customer_id,
               list_sort(list_distinct(list(id_value) FILTER (WHERE id_type = 'email'))) AS emails,
               list_sort(list_distinct(list(id_value) FILTER (WHERE id_type = 'phone'))) AS phones,
               {provider_lists}, list_sort(list_distinct(list(source))) AS sources, min(first_seen) AS first_seen,
               max(last_seen) AS updated_at
        FROM identity_map GROUP BY customer_id
    ), mine AS (
        SELECT r.*, m.customer_id FROM records r JOIN (SELECT DISTINCT record_id, customer_id FROM identity_map) m
        USING (record_id)
    ), survived AS (
        SELECT customer_id, count(DISTINCT record_id) AS record_count, {picks},
               arg_min({{'first_name': first_name, 'last_name': last_name, 'full_name': full_name}}, {newest})
                   FILTER (WHERE coalesce(first_name, last_name, full_name) IS NOT NULL) AS name,
               arg_min({{'line1': address_line1, 'line2': address_line2, 'city': city, 'region': region,
                         'postal_code': postal_code, 'country': country}}, {newest})
                   FILTER (WHERE coalesce(address_line1, address_line2, city, region, postal_code, country)
                           IS NOT NULL) AS address,
               {consent_picks}
        FROM mine GROUP BY customer_id
    )
    SELECT customer_id, coalesce(s.email, emails[1]) AS email, emails, coalesce(s.phone, phones[1]) AS phone, phones,
           name.first_name, name.last_name, name.full_name, address.line1 AS address_line1,
           address.line2 AS address_line2, address.city, address.region, address.postal_code,
           coalesce(address.country, s.country) AS country,
           stripe_customer_ids, shopify_customer_ids, salesforce_contact_ids, salesforce_lead_ids, sources,
           coalesce(record_count, 0) AS record_count, {consent_columns}, first_seen, updated_at
    FROM identifiers LEFT JOIN survived s USING (customer_id)
    """)
    con.execute(f"COPY customers TO '{out / 'customers.parquet'}' (FORMAT parquet)")
    seconds = time.perf_counter() - started
    customers = con.execute("SELECT count(*) FROM customers").fetchone()[0]  # type: ignore[index]
    records = con.execute("SELECT count(*) FROM records").fetchone()[0]  # type: ignore[index]
    cut = dict(con.execute("SELECT cut, count(DISTINCT (id_type, id_value)) FROM links WHERE cut IS NOT NULL "
                           "GROUP BY cut").fetchall())  # fmt: skip
    return DuckResult(seconds, customers, records, rounds, cut, peak_rss_mb()), con


def components(con: Any) -> int:
    """``labels(node, component)``: connected components of the linking identifiers (each linked to its record's
    smallest), by min-label propagation until no label changes. Returns the rounds it took."""
    con.execute("""
    CREATE OR REPLACE TEMP TABLE edges AS
    WITH linking AS (SELECT record_id, node FROM links WHERE cut IS NULL),
         anchors AS (SELECT record_id, min(node) AS anchor FROM linking GROUP BY record_id),
         star AS (SELECT DISTINCT node AS a, anchor AS b FROM linking JOIN anchors USING (record_id)
                  WHERE node <> anchor)
    SELECT a, b FROM star UNION ALL SELECT b, a FROM star
    """)
    con.execute("""
    CREATE OR REPLACE TEMP TABLE labels AS SELECT DISTINCT node, node AS component FROM links WHERE cut IS NULL
    """)
    rounds = 0
    while True:
        rounds += 1
        con.execute("""
        CREATE OR REPLACE TEMP TABLE next_labels AS
        SELECT l.node, least(l.component, coalesce(m.smallest, l.component)) AS component
        FROM labels l LEFT JOIN (
            SELECT e.a AS node, min(n.component) AS smallest FROM edges e JOIN labels n ON n.node = e.b GROUP BY e.a
        ) m USING (node)
        """)
        changed = con.execute("""
        SELECT count(*) FROM next_labels n JOIN labels l USING (node) WHERE n.component <> l.component
        """).fetchone()[0]
        con.execute("DROP TABLE labels; ALTER TABLE next_labels RENAME TO labels")
        if not changed:
            return rounds


def compare(con: Any, spark_map_files: list[str]) -> tuple[int, int, int, int]:
    """Spark's identity map against DuckDB's: (Spark customers, records in a different group, records with a
    different customer id, records only one side has)."""
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE spark_map AS
    SELECT DISTINCT record_id, customer_id FROM read_parquet([{sql_list(spark_map_files)}])
    """)
    spark_customers = con.execute("SELECT count(DISTINCT customer_id) FROM spark_map").fetchone()[0]
    row = con.execute("""
    WITH s AS (SELECT record_id, customer_id, min(record_id) OVER (PARTITION BY customer_id) AS grp FROM spark_map),
         d AS (SELECT DISTINCT record_id, customer_id FROM identity_map),
         d2 AS (SELECT record_id, customer_id, min(record_id) OVER (PARTITION BY customer_id) AS grp FROM d)
    SELECT count(*) FILTER (WHERE s.grp IS DISTINCT FROM d2.grp AND s.record_id IS NOT NULL
                                  AND d2.record_id IS NOT NULL),
           count(*) FILTER (WHERE s.customer_id IS DISTINCT FROM d2.customer_id AND s.record_id IS NOT NULL
                                  AND d2.record_id IS NOT NULL),
           count(*) FILTER (WHERE s.record_id IS NULL OR d2.record_id IS NULL)
    FROM s FULL JOIN d2 USING (record_id)
    """).fetchone()
    return int(spark_customers), int(row[0]), int(row[1]), int(row[2])


def show_differences(con: Any, limit: int = 5) -> None:
    rows = con.execute(f"""
    WITH s AS (SELECT record_id, min(record_id) OVER (PARTITION BY customer_id) AS grp FROM spark_map),
         d AS (SELECT DISTINCT record_id, customer_id FROM identity_map),
         d2 AS (SELECT record_id, min(record_id) OVER (PARTITION BY customer_id) AS grp FROM d)
    SELECT s.record_id, s.grp AS spark_group, d2.grp AS duckdb_group
    FROM s JOIN d2 USING (record_id) WHERE s.grp <> d2.grp ORDER BY 1 LIMIT {limit}
    """).fetchall()
    for record_id, spark_group, duck_group in rows:
        print(f"    {record_id}: Spark groups it with {spark_group}, DuckDB with {duck_group}")


# -- the run ---------------------------------------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="raw records to land (default 1,000,000)")
    parser.add_argument("--increment", type=float, default=0.01, help="share of new records landed after (0.01)")
    parser.add_argument("--seed", type=int, default=7, help="the data's random seed (default 7)")
    parser.add_argument("--spark-master", default="local[*]", help="Spark master (default local[*])")
    parser.add_argument("--stages", type=int, default=0, metavar="N", help="print Spark's N slowest stages per run")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print the N project calls taking the most wall time per run",
    )
    parser.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting on top of the project's (repeatable), e.g. spark.driver.memory=4g",
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the target and the runner log every batch; the table below is the output
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows as it happens

    with tempfile.TemporaryDirectory(prefix="cdp-bench-transform-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        print(f"load average before: {load_average()}  ({os.cpu_count()} CPUs)")
        generator = Generator(args.seed, args.records)
        started = time.perf_counter()
        landed = land(base, generator.initial(args.records), args.seed, LANDED_AT)
        landing = time.perf_counter() - started
        people = len(generator.people)
        print(f"landed {sum(landed.values()):,} raw records of {people:,} people in {landing:.1f} s: "
              + ", ".join(f"{p} {n:,}" for p, n in landed.items()))  # fmt: skip

        # DuckDB first: its figure stands even if a long Spark run is stopped.
        out = base / "duckdb"
        out.mkdir(exist_ok=True)
        cpu = process_cpu_seconds()
        duck, con = duckdb_reference(base, out, os.cpu_count() or 1)
        duck_cpu = process_cpu_seconds() - cpu
        print(f"DuckDB full: {duck.seconds:.1f} s, {duck.records:,} records, {duck.customers:,} customers, "
              f"{duck.rounds} label-propagation rounds, cut identifiers {duck.cut}")  # fmt: skip

        from plugins.transforms.spark import spark_session

        started = time.perf_counter()
        # The console progress bar only garbles the output; it changes no work.
        conf = {"spark.ui.showConsoleProgress": "false", **dict(item.split("=", 1) for item in args.spark_conf)}
        spark_session(args.spark_master, conf=conf)
        jvm_start = time.perf_counter() - started
        print(f"JVM and Spark session start: {jvm_start:.1f} s")
        full_run = functools.partial(run_spark, base, full_refresh=True)
        cpu = spark_cpu_seconds()
        spark_full, summary = profiled(full_run, args.profile) if args.profile else full_run()
        spark_full_cpu = spark_cpu_seconds() - cpu
        per_table = {t.table: t for t in summary.tables}
        spark_customers = per_table["customers"].rows_out
        print(f"Spark full refresh: {spark_full:.1f} s, "
              + ", ".join(f"{t.table} {t.rows_out:,} rows ({t.seconds:.1f} s)" for t in summary.tables))  # fmt: skip
        if args.stages:
            print("\n".join(spark_stages(args.stages)))

        map_customers, regrouped, other_ids, one_sided = compare(con, spark_table_files(base, "identity_map"))
        agree = spark_customers == duck.customers == map_customers and not (regrouped or other_ids or one_sided)
        print(f"agreement: customers Spark {spark_customers:,} (map {map_customers:,}) / DuckDB {duck.customers:,}; "
              f"records grouped differently {regrouped:,}, other customer id {other_ids:,}, on one side only "
              f"{one_sided:,} -> {'AGREE' if agree else 'DIFFER'}")  # fmt: skip
        if regrouped:
            show_differences(con)
        con.close()

        increment = max(1, int(args.records * args.increment))
        started = time.perf_counter()
        land(base, generator.increment(increment), args.seed + 1, UPDATED_AT)
        landing_increment = time.perf_counter() - started
        incremental_run = functools.partial(run_spark, base, full_refresh=False)
        cpu = spark_cpu_seconds()
        spark_incremental, summary = profiled(incremental_run, args.profile) if args.profile else incremental_run()
        spark_incremental_cpu = spark_cpu_seconds() - cpu
        print(f"Spark incremental ({increment:,} records landed in {landing_increment:.1f} s): "
              f"{spark_incremental:.1f} s, "
              + ", ".join(f"{t.table} {t.rows_in:,} in, merged {t.merged:,}, deleted {t.deleted:,} ({t.seconds:.1f} s)"
                          for t in summary.tables))  # fmt: skip
        if args.stages:
            print("\n".join(spark_stages(args.stages)))
        after, con = duckdb_reference(base, out, os.cpu_count() or 1)
        map_customers, regrouped, _other_ids, one_sided = compare(con, spark_table_files(base, "identity_map"))
        grouped_same = not (regrouped or one_sided) and map_customers == after.customers
        print(f"after the increment: customers Spark {map_customers:,} / DuckDB (all files) {after.customers:,}; "
              f"records grouped differently {regrouped:,}, on one side only {one_sided:,} "
              f"-> {'AGREE' if grouped_same else 'DIFFER'} (ids may differ: a merge keeps the older id)")  # fmt: skip
        if regrouped:
            show_differences(con)
        con.close()

        print()
        print(f"{'records':<34}{args.records:>12,}")
        print(f"{'':<34}{'wall s':>12}{'CPU s':>10}")
        print(f"{'landing (target-s3raw)':<34}{landing:>12.1f}")
        print(f"{'JVM and session start':<34}{jvm_start:>12.1f}")
        print(f"{'Spark full refresh':<34}{spark_full:>12.1f}{spark_full_cpu:>10.1f}")
        print(f"{'DuckDB full':<34}{duck.seconds:>12.1f}{duck_cpu:>10.1f}")
        print(f"{'Spark incremental':<34}{spark_incremental:>12.1f}{spark_incremental_cpu:>10.1f}")
        ratio, cpu_ratio = spark_full / duck.seconds, spark_full_cpu / duck_cpu
        share, cpu_share = spark_incremental / spark_full, spark_incremental_cpu / spark_full_cpu
        print(
            f"{'Spark / DuckDB':<34}{ratio:>11.1f}x{cpu_ratio:>9.1f}x  goal <= 3x: {'met' if ratio <= 3 else 'MISSED'}"
        )
        print(
            f"{'incremental / full':<34}{share:>12.1%}{cpu_share:>10.1%}  goal < 10%: "
            f"{'met' if share < 0.1 else 'MISSED'}"
        )
        driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        jvm = jvm_peak_rss_mb()
        alone = duck.peak_rss_mb or 0
        print(f"{'peak RSS MB: Python process':<34}{driver:>12,.0f}   (DuckDB's run alone: {alone:,.0f})")
        if jvm is not None:
            print(f"{'peak RSS MB: Spark JVM':<34}{jvm:>12,.0f}")
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
