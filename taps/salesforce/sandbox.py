"""A local emulator of Salesforce's REST and Bulk API 2.0 for tests and the demo (``cdp sandbox serve salesforce``).

It follows Salesforce's documented protocol, not our tap's convenience:
- OAuth: ``POST /services/oauth2/token`` (form ``grant_type=refresh_token``, ``client_id``, ``client_secret``,
  ``refresh_token``) answers ``access_token``, ``instance_url``, ``id``, ``token_type``, ``issued_at``, ``signature``
  (no ``expires_in``, as Salesforce); errors ``{"error": "invalid_grant", "error_description": ...}``. Data calls
  need ``Authorization: Bearer <token>``; otherwise 401 ``INVALID_SESSION_ID``.
- REST: ``GET /services/data`` (versions), ``/vXX.X/sobjects`` (global describe), ``/vXX.X/sobjects/{obj}/describe``
  (fields with ``name``, ``type``, ``nillable``, ``custom``, ``compoundFieldName``...), ``/vXX.X/query?q=`` and
  ``/vXX.X/queryAll?q=`` (a SOQL subset: ``SELECT fields|COUNT() FROM obj [WHERE a op b [AND ...]]
  [ORDER BY f [ASC|DESC]] [LIMIT n]``; unknown fields answer 400 ``INVALID_FIELD``, unknown objects
  ``INVALID_TYPE``, bad syntax ``MALFORMED_QUERY``; datetimes are unquoted literals), ``nextRecordsUrl`` paging with
  ``done`` and ``totalSize`` (``Sforce-Query-Options: batchSize=200..2000``), ``GET|PATCH|DELETE
  /vXX.X/sobjects/{obj}/{id}``. ``query`` hides rows with ``IsDeleted = true``; ``queryAll`` shows them.
- Bulk API 2.0 query jobs: ``POST /vXX.X/jobs/query`` (``operation`` ``query``/``queryAll``; no COUNT(), ORDER BY,
  LIMIT or compound fields), ``GET /vXX.X/jobs/query/{id}`` (``UploadComplete`` → ``InProgress`` → ``JobComplete``),
  ``GET .../results?locator=&maxRecords=`` as CSV with ``Sforce-Locator`` (``null`` on the last set) and
  ``Sforce-NumberOfRecords``; ``DELETE`` and ``PATCH {"state": "Aborted"}``.
- Every data response carries ``Sforce-Limit-Info: api-usage=N/M``; past M, 403 ``REQUEST_LIMIT_EXCEEDED``.
- Errors are ``[{"message": ..., "errorCode": ...}]`` lists, as Salesforce answers them.

Faults (``SandboxOptions.faults``, a :class:`plugins.connectors.sandbox.FaultPlan`), counted over data requests:
``rate_limit_every`` (+ ``_burst``: 403 ``REQUEST_LIMIT_EXCEEDED``), ``server_error_every`` (+ ``_burst``,
``server_error_status`` default 500: ``UNKNOWN_EXCEPTION``), ``outage_after`` N + ``outage_requests`` M (data calls
N+1 to N+M answer 503), ``slow_every`` + ``slow_seconds`` (late answers, for client timeouts), ``malformed_every``
(those query pages are truncated JSON), ``only`` (counted faults hit only these objects); ``failing`` /
``throttled`` (queries on these objects always answer 503 ``SERVER_UNAVAILABLE`` / 403 ``REQUEST_LIMIT_EXCEEDED``),
``session_uses`` (an access token is valid for N data requests, then 401), ``bulk_polls_in_progress`` (how many polls
a bulk job reports ``InProgress``; default 1).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import random
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.connectors.sandbox import COUNTED_FAULT_SETTINGS, Fault, FaultPlan, SandboxOptions
from plugins.connectors.synthetic import SyntheticPerson, population

DEFAULT_CLIENT_ID = "cdp-sandbox-client-id"
DEFAULT_CLIENT_SECRET = "cdp-sandbox-client-secret"  # noqa: S105  # the sandbox's public test credential
DEFAULT_REFRESH_TOKEN = "cdp-sandbox-refresh-token"  # noqa: S105
DEFAULT_ACCESS_TOKEN = "00DSANDBOX0000001!cdp-sandbox-static-token"  # noqa: S105
ORG_ID = "00D5e000000SANDBOX"
USER_ID = "0055e000000SANDBOX"
OLDEST_VERSION, NEWEST_VERSION = 47.0, 62.0
MIN_BATCH, MAX_BATCH = 200, 2000
FIRST_CREATED = datetime(2024, 1, 1, tzinfo=UTC)
SUPPORTED_FAULTS = (
    *COUNTED_FAULT_SETTINGS,
    "only",
    "failing",
    "throttled",
    "session_uses",
    "bulk_polls_in_progress",
)
DEFAULT_OBJECTS = ("Account", "Contact", "Lead", "Opportunity", "Campaign", "CampaignMember")
KEY_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "Lead": "00Q",
    "Opportunity": "006",
    "Campaign": "701",
    "CampaignMember": "00v",
    "User": "005",
}
SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "address": "urn:address",
    "location": "urn:location",
}
COMPOUND_TYPES = ("address", "location")


# --- errors ---------------------------------------------------------------------------------------------------------


class SalesforceError(Exception):
    """An error answered in Salesforce's REST error shape: ``[{"message", "errorCode"}]``."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code = status, error_code

    def response(self) -> JSONResponse:
        return JSONResponse([{"message": str(self), "errorCode": self.error_code}], status_code=self.status)


def _session_expired() -> SalesforceError:
    return SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")


# --- metadata -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One field of an sObject as ``describe`` reports it."""

    name: str
    type: str
    custom: bool = False
    nillable: bool = True
    length: int = 0
    precision: int = 0
    scale: int = 0
    reference_to: tuple[str, ...] = ()
    picklist: tuple[str, ...] = ()
    compound: str | None = None  # the compound field this one is a component of (BillingCity → BillingAddress)
    label: str = ""

    def describe(self) -> dict[str, Any]:
        label = self.label or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", self.name.removesuffix("__c").replace("_", " "))
        return {
            "name": self.name,
            "label": label,
            "type": self.type,
            "soapType": SOAP_TYPES.get(self.type, "xsd:string"),
            "nillable": self.nillable,
            "custom": self.custom,
            "length": self.length,
            "byteLength": self.length * 3,
            "precision": self.precision,
            "scale": self.scale,
            "digits": 9 if self.type == "int" else 0,
            "filterable": self.type not in ("textarea", *COMPOUND_TYPES),
            "sortable": self.type not in ("textarea", "multipicklist", *COMPOUND_TYPES),
            "calculated": False,
            "createable": self.name not in _SYSTEM_FIELDS,
            "updateable": self.name not in _SYSTEM_FIELDS,
            "defaultedOnCreate": self.name in _SYSTEM_FIELDS or self.type == "boolean",
            "referenceTo": list(self.reference_to),
            "relationshipName": self.name.removesuffix("Id") if self.reference_to else None,
            "compoundFieldName": self.compound,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": value, "validFor": None, "value": value}
                for value in self.picklist
            ],
        }


_SYSTEM_FIELDS = {"Id", "IsDeleted", "CreatedDate", "LastModifiedDate", "SystemModstamp", "CreatedById"}


def _string(name: str, length: int = 255, **kwargs: Any) -> FieldSpec:
    return FieldSpec(name, "string", length=length, **kwargs)


def _money(name: str, **kwargs: Any) -> FieldSpec:
    return FieldSpec(name, "currency", precision=18, scale=2, **kwargs)


def _address(prefix: str, compound: str) -> list[FieldSpec]:
    return [
        FieldSpec(f"{prefix}Street", "textarea", length=255, compound=compound),
        _string(f"{prefix}City", 40, compound=compound),
        _string(f"{prefix}State", 80, compound=compound),
        _string(f"{prefix}PostalCode", 20, compound=compound),
        _string(f"{prefix}Country", 80, compound=compound),
        FieldSpec(f"{prefix}Latitude", "double", precision=18, scale=15, compound=compound),
        FieldSpec(f"{prefix}Longitude", "double", precision=18, scale=15, compound=compound),
        FieldSpec(f"{prefix}GeocodeAccuracy", "picklist", length=40, compound=compound, picklist=GEOCODE_ACCURACY),
        FieldSpec(compound, "address"),
    ]


def _system(*, owner: bool = True) -> list[FieldSpec]:
    fields = [
        FieldSpec("Id", "id", nillable=False, length=18),
        FieldSpec("IsDeleted", "boolean", nillable=False),
        FieldSpec("CreatedDate", "datetime", nillable=False),
        FieldSpec("CreatedById", "reference", nillable=False, length=18, reference_to=("User",)),
        FieldSpec("LastModifiedDate", "datetime", nillable=False),
        FieldSpec("SystemModstamp", "datetime", nillable=False),
    ]
    if owner:
        fields.append(FieldSpec("OwnerId", "reference", nillable=False, length=18, reference_to=("User",)))
    return fields


GEOCODE_ACCURACY = ("Address", "NearAddress", "Block", "Street", "ExtendedZip", "Zip", "City", "Unknown")
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Trade Show", "Other")
OBJECT_FIELDS: dict[str, list[FieldSpec]] = {
    "Account": [
        *_system(),
        _string("Name", nillable=False),
        FieldSpec("Type", "picklist", length=255, picklist=("Prospect", "Customer - Direct", "Partner", "Other")),
        FieldSpec("Industry", "picklist", length=255, picklist=("Retail", "Technology", "Media", "Finance")),
        *_address("Billing", "BillingAddress"),
        FieldSpec("Phone", "phone", length=40),
        FieldSpec("Website", "url", length=255),
        _money("AnnualRevenue"),
        FieldSpec("NumberOfEmployees", "int", precision=8),
        FieldSpec("Description", "textarea", length=32000),
        FieldSpec("Customer_Tier__c", "picklist", custom=True, length=255, picklist=("Bronze", "Silver", "Gold")),
        FieldSpec("Churn_Risk__c", "percent", custom=True, precision=5, scale=2),
        FieldSpec("First_Purchase__c", "date", custom=True),
        FieldSpec("Is_Partner__c", "boolean", custom=True, nillable=False),
        FieldSpec("HQ_Location__Latitude__s", "double", custom=True, precision=9, scale=6, compound="HQ_Location__c"),
        FieldSpec("HQ_Location__Longitude__s", "double", custom=True, precision=9, scale=6, compound="HQ_Location__c"),
        FieldSpec("HQ_Location__c", "location", custom=True),
    ],
    "Contact": [
        *_system(),
        FieldSpec("AccountId", "reference", length=18, reference_to=("Account",)),
        _string("FirstName", 40),
        _string("LastName", 80, nillable=False),
        _string("Name", 121, nillable=False),
        FieldSpec("Email", "email", length=80),
        FieldSpec("Phone", "phone", length=40),
        *_address("Mailing", "MailingAddress"),
        FieldSpec("Birthdate", "date"),
        FieldSpec("HasOptedOutOfEmail", "boolean", nillable=False),
        FieldSpec("LeadSource", "picklist", length=255, picklist=LEAD_SOURCES),
        FieldSpec("Preferred_Language__c", "picklist", custom=True, length=255, picklist=("en", "fr", "de", "ja")),
        _money("Lifetime_Value__c", custom=True),
        FieldSpec(
            "Interests__c", "multipicklist", custom=True, length=4099, picklist=("Running", "Cycling", "Yoga", "Chess")
        ),
    ],
    "Lead": [
        *_system(),
        _string("FirstName", 40),
        _string("LastName", 80, nillable=False),
        _string("Name", 121, nillable=False),
        _string("Company", nillable=False),
        FieldSpec("Email", "email", length=80),
        FieldSpec("Phone", "phone", length=40),
        FieldSpec(
            "Status", "picklist", nillable=False, length=255, picklist=("Open", "Working", "Qualified", "Unqualified")
        ),
        FieldSpec("LeadSource", "picklist", length=255, picklist=LEAD_SOURCES),
        FieldSpec("Rating", "picklist", length=255, picklist=("Hot", "Warm", "Cold")),
        FieldSpec("IsConverted", "boolean", nillable=False),
        *_address("", "Address"),
        _money("AnnualRevenue"),
        FieldSpec("NumberOfEmployees", "int", precision=8),
        FieldSpec("Lead_Score__c", "double", custom=True, precision=5, scale=1),
    ],
    "Opportunity": [
        *_system(),
        FieldSpec("AccountId", "reference", length=18, reference_to=("Account",)),
        _string("Name", 120, nillable=False),
        FieldSpec(
            "StageName",
            "picklist",
            nillable=False,
            length=255,
            picklist=("Prospecting", "Qualification", "Negotiation", "Closed Won", "Closed Lost"),
        ),
        _money("Amount"),
        FieldSpec("Probability", "percent", precision=3, scale=0),
        FieldSpec("CloseDate", "date", nillable=False),
        FieldSpec("IsClosed", "boolean", nillable=False),
        FieldSpec("IsWon", "boolean", nillable=False),
        FieldSpec("Type", "picklist", length=255, picklist=("New Business", "Existing Business")),
        FieldSpec("Discount_Percent__c", "percent", custom=True, precision=5, scale=2),
        FieldSpec("Contract_Length_Months__c", "double", custom=True, precision=3, scale=0),
    ],
    "Campaign": [
        *_system(),
        _string("Name", 80, nillable=False),
        FieldSpec("Type", "picklist", length=255, picklist=("Email", "Webinar", "Conference", "Advertisement")),
        FieldSpec("Status", "picklist", length=255, picklist=("Planned", "In Progress", "Completed", "Aborted")),
        FieldSpec("StartDate", "date"),
        FieldSpec("EndDate", "date"),
        _money("BudgetedCost"),
        _money("ActualCost"),
        FieldSpec("IsActive", "boolean", nillable=False),
        FieldSpec("NumberOfLeads", "int", nillable=False, precision=9),
        FieldSpec("Channel__c", "picklist", custom=True, length=255, picklist=("Online", "Offline", "Partner")),
    ],
    "CampaignMember": [
        *_system(owner=False),
        FieldSpec("CampaignId", "reference", nillable=False, length=18, reference_to=("Campaign",)),
        FieldSpec("LeadId", "reference", length=18, reference_to=("Lead",)),
        FieldSpec("ContactId", "reference", length=18, reference_to=("Contact",)),
        FieldSpec("Status", "picklist", length=255, picklist=("Sent", "Responded")),
        FieldSpec("HasResponded", "boolean", nillable=False),
        FieldSpec("FirstRespondedDate", "date"),
        FieldSpec("Attribution_Weight__c", "percent", custom=True, precision=5, scale=2),
    ],
}


def salesforce_id(prefix: str, number: int) -> str:
    """An 18-character Salesforce id: 3-char key prefix, 12-char body, 3-char case-safe checksum suffix."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    body, value = "", number
    for _ in range(12):
        value, digit = divmod(value, 62)
        body = alphabet[digit] + body
    short = f"{prefix}{body}"
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, ch in enumerate(short[chunk * 5 : chunk * 5 + 5]) if ch.isupper())
        suffix += "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits]
    return short + suffix


# --- synthetic org --------------------------------------------------------------------------------------------------


def _fields_by_lower(obj: str) -> dict[str, FieldSpec]:
    return {spec.name.lower(): spec for spec in OBJECT_FIELDS[obj]}


class SyntheticOrg:
    """The org's rows per object, generated deterministically from the seed; mutable through the REST API."""

    def __init__(self, records: int, seed: int) -> None:
        self.rows: dict[str, dict[str, dict[str, Any]]] = {obj: {} for obj in OBJECT_FIELDS}
        self._rng = random.Random(seed)
        self._people = population(seed)  # the people Stripe's and Shopify's sandboxes share
        self._counter = 0
        for obj in OBJECT_FIELDS:
            for index in range(records):
                self._add(obj, index)
        newest: datetime = max(row["SystemModstamp"] for rows in self.rows.values() for row in rows.values())
        self.clock: datetime = newest.replace(microsecond=0) + timedelta(minutes=1)

    def _next_id(self, obj: str) -> str:
        self._counter += 1
        return salesforce_id(KEY_PREFIXES[obj], 5_000_000 + self._counter * 7919)

    def _add(self, obj: str, index: int) -> None:
        rng = self._rng
        created = FIRST_CREATED + timedelta(minutes=7 * index, seconds=rng.randrange(0, 60))
        modified = created + timedelta(seconds=rng.randrange(0, 3 * 86400))
        row: dict[str, Any] = {
            "Id": self._next_id(obj),
            "IsDeleted": rng.random() < 0.03,
            "CreatedDate": created,
            "CreatedById": salesforce_id("005", 42),
            "LastModifiedDate": modified,
            "SystemModstamp": modified,
            "OwnerId": salesforce_id("005", 42 + rng.randrange(3)),
        }
        row.update(getattr(self, f"_make_{obj.lower()}")(rng, index, created))
        for spec in OBJECT_FIELDS[obj]:
            row.setdefault(spec.name, None)
        if obj == "CampaignMember":
            row.pop("OwnerId", None)
        self.rows[obj][row["Id"]] = row

    def _pick(self, obj: str, rng: random.Random) -> str | None:
        ids = list(self.rows[obj])
        return rng.choice(ids) if ids else None

    @staticmethod
    def _address(prefix: str, rng: random.Random, who: SyntheticPerson) -> dict[str, Any]:
        return {
            f"{prefix}Street": f"{who.line1}\nSuite {rng.randrange(1, 900)}" if rng.random() < 0.2 else who.line1,
            f"{prefix}City": who.city,
            f"{prefix}State": who.state,
            f"{prefix}PostalCode": who.postal_code,
            f"{prefix}Country": who.country,
            f"{prefix}Latitude": round(rng.uniform(-60, 70), 6) if rng.random() < 0.5 else None,
            f"{prefix}Longitude": round(rng.uniform(-170, 170), 6) if rng.random() < 0.5 else None,
            f"{prefix}GeocodeAccuracy": rng.choice([None, "Address", "Street", "City"]),
        }

    def _make_account(self, rng: random.Random, index: int, created: datetime) -> dict[str, Any]:
        who = self._people.stranger(index)  # an account is a company: its phone and domain are nobody's
        located = rng.random() < 0.6
        return {
            "Name": f"{who.last_name} {rng.choice(['GmbH', 'SARL', 'Ltd', 'Inc.', '株式会社', 'S.A.'])}",
            "Type": rng.choice(["Prospect", "Customer - Direct", "Partner", None]),
            "Industry": rng.choice(["Retail", "Technology", "Media", "Finance", None]),
            **self._address("Billing", rng, who),
            "Phone": who.phone,
            "Website": f"https://www.{who.email.split('@')[1]}",
            "AnnualRevenue": rng.choice([None, round(rng.uniform(1e5, 5e8), 2)]),
            "NumberOfEmployees": rng.choice([None, rng.randrange(1, 50_000)]),
            "Description": rng.choice([None, "Key account, «priority» 🚀", 'Multi-line\nnote, with "quotes"']),
            "Customer_Tier__c": rng.choice(["Bronze", "Silver", "Gold", None]),
            "Churn_Risk__c": round(rng.uniform(0, 100), 2),
            "First_Purchase__c": (created + timedelta(days=rng.randrange(0, 400))).date(),
            "Is_Partner__c": rng.random() < 0.2,
            "HQ_Location__Latitude__s": round(rng.uniform(-60, 70), 6) if located else None,
            "HQ_Location__Longitude__s": round(rng.uniform(-170, 170), 6) if located else None,
        }

    def _make_contact(self, rng: random.Random, index: int, created: datetime) -> dict[str, Any]:
        who = self._people.member("salesforce_contact", index)
        return {
            "AccountId": self._pick("Account", rng),
            "FirstName": who.first_name,
            "LastName": who.last_name,
            "Name": who.name,
            "Email": who.email,
            "Phone": who.phone,
            **self._address("Mailing", rng, who),
            "Birthdate": date(1950 + rng.randrange(55), 1 + rng.randrange(12), 1 + rng.randrange(28)),
            "HasOptedOutOfEmail": rng.random() < 0.1,
            "LeadSource": rng.choice([*LEAD_SOURCES, None]),
            "Preferred_Language__c": rng.choice(["en", "fr", "de", "ja", None]),
            "Lifetime_Value__c": round(rng.uniform(0, 25_000), 2),
            "Interests__c": ";".join(sorted(rng.sample(["Running", "Cycling", "Yoga", "Chess"], rng.randrange(0, 3))))
            or None,
        }

    def _make_lead(self, rng: random.Random, index: int, created: datetime) -> dict[str, Any]:
        who = self._people.member("salesforce_lead", index)
        return {
            "FirstName": who.first_name,
            "LastName": who.last_name,
            "Name": who.name,
            "Company": f"{self._people.stranger(index + 1).last_name} & Co.",
            "Email": who.email,
            "Phone": who.phone,
            "Status": rng.choice(["Open", "Working", "Qualified", "Unqualified"]),
            "LeadSource": rng.choice([*LEAD_SOURCES, None]),
            "Rating": rng.choice(["Hot", "Warm", "Cold", None]),
            "IsConverted": rng.random() < 0.15,
            **self._address("", rng, who),
            "AnnualRevenue": rng.choice([None, round(rng.uniform(1e4, 1e7), 2)]),
            "NumberOfEmployees": rng.choice([None, rng.randrange(1, 5_000)]),
            "Lead_Score__c": round(rng.uniform(0, 100), 1),
        }

    def _make_opportunity(self, rng: random.Random, index: int, created: datetime) -> dict[str, Any]:
        stage = rng.choice(["Prospecting", "Qualification", "Negotiation", "Closed Won", "Closed Lost"])
        return {
            "AccountId": self._pick("Account", rng),
            "Name": f"Deal #{index} \u2013 {rng.choice(['Renewal', 'Upsell', 'Neuvertrag', 'Expansión'])}",
            "StageName": stage,
            "Amount": round(rng.uniform(500, 250_000), 2),
            "Probability": {"Closed Won": 100, "Closed Lost": 0}.get(stage, rng.choice([10, 20, 50, 75])),
            "CloseDate": (created + timedelta(days=rng.randrange(10, 200))).date(),
            "IsClosed": stage.startswith("Closed"),
            "IsWon": stage == "Closed Won",
            "Type": rng.choice(["New Business", "Existing Business", None]),
            "Discount_Percent__c": rng.choice([None, round(rng.uniform(0, 30), 2)]),
            "Contract_Length_Months__c": float(rng.choice([1, 12, 24, 36])),
        }

    def _make_campaign(self, rng: random.Random, index: int, created: datetime) -> dict[str, Any]:
        start = (created + timedelta(days=rng.randrange(0, 60))).date()
        return {
            "Name": f"{rng.choice(['Spring', 'Été', 'Herbst', '冬'])} campaign {index}",
            "Type": rng.choice(["Email", "Webinar", "Conference", "Advertisement"]),
            "Status": rng.choice(["Planned", "In Progress", "Completed", "Aborted"]),
            "StartDate": start,
            "EndDate": start + timedelta(days=rng.randrange(1, 90)),
            "BudgetedCost": round(rng.uniform(1_000, 100_000), 2),
            "ActualCost": rng.choice([None, round(rng.uniform(500, 120_000), 2)]),
            "IsActive": rng.random() < 0.5,
            "NumberOfLeads": rng.randrange(0, 5_000),
            "Channel__c": rng.choice(["Online", "Offline", "Partner", None]),
        }

    def _make_campaignmember(self, rng: random.Random, index: int, created: datetime) -> dict[str, Any]:
        responded = rng.random() < 0.3
        contact = rng.random() < 0.5
        return {
            "CampaignId": self._pick("Campaign", rng),
            "LeadId": None if contact else self._pick("Lead", rng),
            "ContactId": self._pick("Contact", rng) if contact else None,
            "Status": "Responded" if responded else "Sent",
            "HasResponded": responded,
            "FirstRespondedDate": (created + timedelta(days=rng.randrange(1, 30))).date() if responded else None,
            "Attribution_Weight__c": round(rng.uniform(0, 100), 2),
        }

    def tick(self) -> datetime:
        """Advance the org's clock by a second: every change gets a later SystemModstamp than everything before."""
        self.clock += timedelta(seconds=1)
        return self.clock

    def update(self, obj: str, record_id: str, values: dict[str, Any]) -> None:
        row = self.rows[obj].get(record_id)
        if row is None or row["IsDeleted"]:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        specs = _fields_by_lower(obj)
        for name, value in values.items():
            spec = specs.get(name.lower())
            if spec is None:
                raise SalesforceError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}")
            if spec.name in _SYSTEM_FIELDS or spec.type in COMPOUND_TYPES:
                raise SalesforceError(
                    400, "INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {spec.name}."
                )
            row[spec.name] = _parse_value(spec, value)
        now = self.tick()
        row["LastModifiedDate"] = row["SystemModstamp"] = now

    def delete(self, obj: str, record_id: str) -> None:
        row = self.rows[obj].get(record_id)
        if row is None or row["IsDeleted"]:
            raise SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted")
        row["IsDeleted"] = True
        row["SystemModstamp"] = self.tick()


def _parse_value(spec: FieldSpec, value: Any) -> Any:
    if value is None:
        return None
    if spec.type == "datetime":
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if spec.type == "date":
        return date.fromisoformat(str(value))
    return value


# --- SOQL -----------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<op><=|>=|!=|<>|=|<|>)|(?P<punct>[(),])|(?P<word>[A-Za-z0-9_.:+\-]+))"
)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    column: int  # 1-based, as Salesforce reports errors


@dataclass(frozen=True)
class Condition:
    field: FieldSpec
    op: str
    value: Any


@dataclass
class SoqlQuery:
    """A parsed SOQL statement of the subset the sandbox understands."""

    text: str
    sobject: str
    fields: list[FieldSpec]
    count: bool = False
    conditions: list[Condition] = field(default_factory=list)
    order_by: FieldSpec | None = None
    descending: bool = False
    limit: int | None = None


def _malformed(query: str, token: Token | None, expected: str) -> SalesforceError:
    found = token.text if token else "end of query"
    column = token.column if token else len(query) + 1
    return SalesforceError(
        400,
        "MALFORMED_QUERY",
        f"\n{query}\n{' ' * (column - 1)}^\nERROR at Row:1:Column:{column}\n"
        f"unexpected token: '{found}' (expected {expected})",
    )


def _tokenize(query: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(query):
        if not query[position:].strip():
            break
        match = _TOKEN.match(query, position)
        if not match or match.end() == position:
            bad = Token("word", query[position:].strip()[:1], position + 1)
            raise _malformed(query, bad, "a token")
        kind = match.lastgroup or "word"
        text = match.group(kind)
        tokens.append(Token(kind, text, match.start(kind) + 1))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = _tokenize(query)
        self.position = 0

    def peek(self) -> Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def next(self, expected: str) -> Token:
        token = self.peek()
        if token is None:
            raise _malformed(self.query, None, expected)
        self.position += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.upper() == word:
            self.position += 1
            return True
        return False

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise _malformed(self.query, self.peek(), word)

    def no_such_column(self, token: Token, sobject: str) -> SalesforceError:
        return SalesforceError(
            400,
            "INVALID_FIELD",
            f"\n{self.query}\n{' ' * (token.column - 1)}^\nERROR at Row:1:Column:{token.column}\n"
            f"No such column '{token.text}' on entity '{sobject}'. If you are attempting to use a custom field, be "
            "sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call "
            "for the appropriate names.",
        )

    def parse(self) -> SoqlQuery:
        self.expect_keyword("SELECT")
        count = False
        field_tokens: list[Token] = []
        if self.keyword("COUNT"):
            if self.next("(").text != "(" or self.next(")").text != ")":
                raise _malformed(self.query, self.tokens[self.position - 1], "COUNT()")
            count = True
        else:
            while True:
                token = self.next("a field name")
                if token.kind != "word" or token.text.upper() == "FROM":
                    raise _malformed(self.query, token, "a field name")
                field_tokens.append(token)
                if not (self.peek() and self.peek().text == ","):  # type: ignore[union-attr]
                    break
                self.position += 1
        self.expect_keyword("FROM")
        object_token = self.next("an object name")
        sobject = next((name for name in OBJECT_FIELDS if name.lower() == object_token.text.lower()), None)
        if sobject is None:
            raise SalesforceError(
                400,
                "INVALID_TYPE",
                f"\n{self.query}\n{' ' * (object_token.column - 1)}^\nERROR at Row:1:Column:{object_token.column}\n"
                f"sObject type '{object_token.text}' is not supported. If you are attempting to use a custom object, "
                "be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call "
                "for the appropriate names.",
            )
        specs = _fields_by_lower(sobject)
        fields = []
        for token in field_tokens:
            spec = specs.get(token.text.lower())
            if spec is None:
                raise self.no_such_column(token, sobject)
            fields.append(spec)
        result = SoqlQuery(self.query, sobject, fields, count=count)
        if self.keyword("WHERE"):
            result.conditions.append(self.condition(sobject, specs))
            while self.keyword("AND"):
                result.conditions.append(self.condition(sobject, specs))
        if self.keyword("ORDER"):
            self.expect_keyword("BY")
            token = self.next("a field name")
            spec = specs.get(token.text.lower())
            if spec is None:
                raise self.no_such_column(token, sobject)
            result.order_by = spec
            if self.keyword("DESC"):
                result.descending = True
            else:
                self.keyword("ASC")
        if self.keyword("LIMIT"):
            token = self.next("a number")
            if not token.text.isdigit():
                raise _malformed(self.query, token, "a number")
            result.limit = int(token.text)
        if self.peek() is not None:
            raise _malformed(self.query, self.peek(), "end of query")
        return result

    def condition(self, sobject: str, specs: dict[str, FieldSpec]) -> Condition:
        token = self.next("a field name")
        spec = specs.get(token.text.lower())
        if spec is None:
            raise self.no_such_column(token, sobject)
        op_token = self.next("a comparison operator")
        if op_token.kind != "op":
            raise _malformed(self.query, op_token, "a comparison operator")
        literal = self.next("a value")
        return Condition(spec, "!=" if op_token.text == "<>" else op_token.text, self.literal(spec, literal))

    def literal(self, spec: FieldSpec, token: Token) -> Any:
        text = token.text
        if token.kind == "word" and text.lower() == "null":
            return None
        quoted = token.kind == "string"
        kind = {"datetime": "dateTime", "date": "date", "boolean": "boolean"}.get(spec.type)
        numeric = spec.type in ("int", "double", "currency", "percent")
        if (kind or numeric) and quoted:
            wanted = kind or "double"
            raise SalesforceError(
                400,
                "INVALID_FIELD",
                f"\n{self.query}\n{' ' * (token.column - 1)}^\nERROR at Row:1:Column:{token.column}\n"
                f"value of filter criterion for field '{spec.name}' must be of type {wanted} and should not be "
                "enclosed in quotes",
            )
        if spec.type == "datetime" and _DATETIME.match(text):
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        if spec.type == "date" and _DATE.match(text):
            return date.fromisoformat(text)
        if spec.type == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if numeric and _NUMBER.match(text):
            return float(text)
        if not (kind or numeric) and quoted:
            return text[1:-1].replace("\\'", "'")
        raise _malformed(self.query, token, f"a {spec.type} literal")


def parse_soql(query: str) -> SoqlQuery:
    """Parse ``query`` or raise the ``SalesforceError`` Salesforce would answer."""
    return _Parser(query).parse()


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a is not None and b is not None and a < b,
    "<=": lambda a, b: a is not None and b is not None and a <= b,
    ">": lambda a, b: a is not None and b is not None and a > b,
    ">=": lambda a, b: a is not None and b is not None and a >= b,
}


def run_query(org: SyntheticOrg, query: SoqlQuery, *, include_deleted: bool) -> list[dict[str, Any]]:
    """The org's rows matching ``query`` (all fields, unserialised), in the requested order."""
    rows = [row for row in org.rows[query.sobject].values() if include_deleted or not row["IsDeleted"]]
    rows = [row for row in rows if all(_COMPARE[c.op](row.get(c.field.name), c.value) for c in query.conditions)]
    if query.order_by is not None:
        name = query.order_by.name
        present = sorted((r for r in rows if r.get(name) is not None), key=lambda r: r[name], reverse=query.descending)
        missing = [r for r in rows if r.get(name) is None]
        rows = missing + present if not query.descending else present + missing  # nulls first ascending
    return rows[: query.limit] if query.limit is not None else rows


# --- serialisation --------------------------------------------------------------------------------------------------


def _compound_value(obj: str, spec: FieldSpec, row: dict[str, Any]) -> dict[str, Any] | None:
    parts = [part for part in OBJECT_FIELDS[obj] if part.compound == spec.name]
    if spec.type == "location":
        latitude, longitude = (row.get(part.name) for part in parts)
        return None if latitude is None and longitude is None else {"latitude": latitude, "longitude": longitude}
    prefix = parts[0].name.removesuffix("Street")
    value = {
        "city": row.get(f"{prefix}City"),
        "country": row.get(f"{prefix}Country"),
        "geocodeAccuracy": row.get(f"{prefix}GeocodeAccuracy"),
        "latitude": row.get(f"{prefix}Latitude"),
        "longitude": row.get(f"{prefix}Longitude"),
        "postalCode": row.get(f"{prefix}PostalCode"),
        "state": row.get(f"{prefix}State"),
        "street": row.get(f"{prefix}Street"),
    }
    return None if all(v is None for v in value.values()) else value


def rest_record(obj: str, row: dict[str, Any], fields: list[FieldSpec], version: str) -> dict[str, Any]:
    """A row as the REST API returns it: ``attributes`` first, then the selected fields in order."""
    record: dict[str, Any] = {
        "attributes": {"type": obj, "url": f"/services/data/{version}/sobjects/{obj}/{row['Id']}"}
    }
    for spec in fields:
        value = _compound_value(obj, spec, row) if spec.type in COMPOUND_TYPES else row.get(spec.name)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"
        elif isinstance(value, date):
            value = value.isoformat()
        record[spec.name] = value
    return record


def csv_value(value: Any) -> str:
    """A value as Bulk API 2.0 writes it into CSV: empty for null, lower-case booleans, UTC ``Z`` datetimes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


# --- server state ---------------------------------------------------------------------------------------------------


@dataclass
class QueryCursor:
    sobject: str
    records: list[dict[str, Any]]


@dataclass
class BulkJob:
    info: dict[str, Any]
    sobject: str
    columns: list[str]
    rows: list[list[str]]
    polls_left: int


@dataclass
class SalesforceState:
    """Everything the sandbox remembers: the org's data, issued tokens, query cursors, bulk jobs, counters."""

    options: SandboxOptions
    faults: FaultPlan = field(init=False)  # from options; a test may swap it mid-run
    page_size: int = MAX_BATCH
    api_daily_limit: int = 15_000
    org: SyntheticOrg = field(init=False)
    tokens: dict[str, int | None] = field(default_factory=dict)  # token → data requests left (None: unlimited)
    cursors: dict[str, QueryCursor] = field(default_factory=dict)
    jobs: dict[str, BulkJob] = field(default_factory=dict)
    api_usage: int = 0
    requests_seen: int = 0
    token_requests: int = 0
    bulk_jobs_created: int = 0
    injected: Counter[str] = field(default_factory=Counter)  # faults answered, by kind (for tests and the demo)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.options.faults.require_only("salesforce", SUPPORTED_FAULTS)
        self.faults = self.options.faults
        self.org = SyntheticOrg(self.options.records, self.options.seed)
        self.tokens[self.credential("access_token")] = self._session_uses()
        self._ids = random.Random(self.options.seed + 1)

    def credential(self, name: str) -> str:
        defaults = {
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "refresh_token": DEFAULT_REFRESH_TOKEN,
            "access_token": DEFAULT_ACCESS_TOKEN,
        }
        return self.options.credentials.get(name, defaults[name])

    def _session_uses(self) -> int | None:
        return self.faults.session_uses or None

    def issue_token(self) -> str:
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        with self.lock:
            self.tokens[token] = self._session_uses()
            self.token_requests += 1
        return token

    def new_id(self, prefix: str) -> str:
        with self.lock:
            return salesforce_id(prefix, self._ids.randrange(62**11))


def _authorise(request: Request, state: SalesforceState) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "oauth") or not token:
        raise _session_expired()
    with state.lock:
        if token.strip() not in state.tokens:
            raise _session_expired()
        uses = state.tokens[token.strip()]
        if uses is not None:
            if uses <= 0:
                raise _session_expired()
            state.tokens[token.strip()] = uses - 1


async def _admit(request: Request, state: SalesforceState, sobject: str | None = None) -> None:
    """Authorise, count against the API limit and inject faults, in Salesforce's order."""
    _authorise(request, state)
    with state.lock:
        if state.api_usage >= state.api_daily_limit:
            raise SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        state.api_usage += 1
        state.requests_seen += 1
        count = state.requests_seen
    faults = state.faults
    fault = (faults.resource_fault([sobject]) if sobject is not None else None) or faults.counted_fault(count, sobject)
    if fault is Fault.FAILING:
        state.injected["server_unavailable"] += 1
        raise SalesforceError(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable, try again later.")
    if fault in (Fault.THROTTLED, Fault.RATE_LIMIT):
        state.injected["request_limit"] += 1
        raise SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.")
    if fault is Fault.OUTAGE:
        state.injected["server_error"] += 1
        raise SalesforceError(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable, try again later.")
    if fault is Fault.SERVER_ERROR:
        state.injected["server_error"] += 1
        raise SalesforceError(
            faults.server_error_status or 500,
            "UNKNOWN_EXCEPTION",
            f"An unexpected error occurred. Please include this ErrorId: {count}-sandbox",
        )
    if fault is Fault.SLOW:
        state.injected["slow"] += 1
        await asyncio.sleep(faults.slow_seconds)


def _version(request: Request) -> str:
    version = str(request.path_params["version"])
    match = re.fullmatch(r"v(\d+\.\d)", version)
    if not match or not OLDEST_VERSION <= float(match.group(1)) <= NEWEST_VERSION:
        raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
    return version


def _sobject(name: str) -> str:
    for known in OBJECT_FIELDS:
        if known.lower() == name.lower():
            return known
    raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


def _with_limit_info(response: Response, state: SalesforceState) -> Response:
    response.headers["Sforce-Limit-Info"] = f"api-usage={state.api_usage}/{state.api_daily_limit}"
    return response


def _batch_size(request: Request, state: SalesforceState) -> int:
    size = MAX_BATCH
    options = request.headers.get("sforce-query-options", "")
    match = re.search(r"batchSize\s*=\s*(\d+)", options)
    if match:
        size = max(MIN_BATCH, min(MAX_BATCH, int(match.group(1))))
    return min(size, state.page_size)  # "the batch size is not guaranteed": the org may return fewer


def _query_page(
    state: SalesforceState, version: str, locator: str, offset: int, batch: int, malformed: bool
) -> Response:
    with state.lock:
        cursor = state.cursors.get(locator)
    if cursor is None:
        raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    page = cursor.records[offset : offset + batch]
    done = offset + batch >= len(cursor.records)
    body: dict[str, Any] = {"totalSize": len(cursor.records), "done": done}
    if not done:
        body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{offset + batch}"
    body["records"] = page
    if done:
        with state.lock:
            state.cursors.pop(locator, None)
    response = JSONResponse(body)
    if malformed:
        state.injected["malformed"] += 1
        response.body = response.body[: max(1, len(response.body) // 2)]
        response.headers["content-length"] = str(len(response.body))
    return response


# --- the app --------------------------------------------------------------------------------------------------------


def create_sandbox(
    options: SandboxOptions | None = None, *, page_size: int = MAX_BATCH, api_daily_limit: int = 15_000
) -> Starlette:
    """The Salesforce sandbox as an ASGI app. ``page_size`` caps query batches (Salesforce may return fewer rows per
    batch than asked); ``api_daily_limit`` is the org's daily API request allocation."""
    state = SalesforceState(options or SandboxOptions(), page_size=page_size, api_daily_limit=api_daily_limit)

    def handled(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except SalesforceError as error:
                response = error.response()
            return _with_limit_info(response, state) if request.url.path.startswith("/services/data/v") else response

        return endpoint

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))

        def oauth_error(error: str, description: str) -> JSONResponse:
            return JSONResponse({"error": error, "error_description": description}, status_code=400)

        if form.get("grant_type") != "refresh_token":
            return oauth_error("unsupported_grant_type", "grant type not supported")
        if form.get("client_id") != state.credential("client_id"):
            return oauth_error("invalid_client_id", "client identifier invalid")
        if form.get("client_secret") != state.credential("client_secret"):
            return oauth_error("invalid_client", "invalid client credentials")
        if form.get("refresh_token") != state.credential("refresh_token"):
            return oauth_error("invalid_grant", "expired access/refresh token")
        instance_url = str(request.base_url).rstrip("/")
        issued = str(int(datetime.now(UTC).timestamp() * 1000))
        return JSONResponse(
            {
                "access_token": state.issue_token(),
                "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
                "scope": "refresh_token api",
                "instance_url": instance_url,
                "id": f"{instance_url}/id/{ORG_ID}/{USER_ID}",
                "token_type": "Bearer",
                "issued_at": issued,
            }
        )

    async def versions(request: Request) -> Response:
        return JSONResponse(
            [
                {"label": f"API {v:.1f}", "url": f"/services/data/v{v:.1f}", "version": f"{v:.1f}"}
                for v in (float(n) for n in range(int(OLDEST_VERSION), int(NEWEST_VERSION) + 1))
            ]
        )

    async def global_describe(request: Request) -> Response:
        version = _version(request)
        await _admit(request, state)
        return JSONResponse(
            {
                "encoding": "UTF-8",
                "maxBatchSize": 200,
                "sobjects": [
                    {
                        "name": obj,
                        "label": obj,
                        "keyPrefix": KEY_PREFIXES[obj],
                        "custom": False,
                        "queryable": True,
                        "replicateable": True,
                        "urls": {"describe": f"/services/data/{version}/sobjects/{obj}/describe"},
                    }
                    for obj in OBJECT_FIELDS
                ],
            }
        )

    async def describe(request: Request) -> Response:
        version = _version(request)
        obj = _sobject(request.path_params["sobject"])
        await _admit(request, state)
        return JSONResponse(
            {
                "name": obj,
                "label": obj,
                "keyPrefix": KEY_PREFIXES[obj],
                "custom": False,
                "queryable": True,
                "retrieveable": True,
                "replicateable": True,
                "deletable": True,
                "fields": [spec.describe() for spec in OBJECT_FIELDS[obj]],
                "urls": {
                    "describe": f"/services/data/{version}/sobjects/{obj}/describe",
                    "rowTemplate": f"/services/data/{version}/sobjects/{obj}/{{ID}}",
                },
            }
        )

    async def record(request: Request) -> Response:
        version = _version(request)
        obj = _sobject(request.path_params["sobject"])
        record_id = str(request.path_params["record_id"])
        await _admit(request, state, obj)
        if request.method == "PATCH":
            values = await request.json()
            if not isinstance(values, dict):
                raise SalesforceError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject")
            with state.lock:
                state.org.update(obj, record_id, values)
            return Response(status_code=204)
        if request.method == "DELETE":
            with state.lock:
                state.org.delete(obj, record_id)
            return Response(status_code=204)
        with state.lock:
            row = state.org.rows[obj].get(record_id)
        if row is None or row["IsDeleted"]:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        return JSONResponse(rest_record(obj, row, OBJECT_FIELDS[obj], version))

    def query_endpoint(include_deleted: bool) -> Any:
        async def query(request: Request) -> Response:
            version = _version(request)
            text = request.query_params.get("q")
            if not text:
                raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
            soql = parse_soql(text)
            await _admit(request, state, soql.sobject)
            with state.lock:
                rows = run_query(state.org, soql, include_deleted=include_deleted)
                if soql.count:
                    return JSONResponse({"totalSize": len(rows), "done": True, "records": []})
                records = [rest_record(soql.sobject, row, soql.fields, version) for row in rows]
                locator = state.new_id("01g")
                state.cursors[locator] = QueryCursor(soql.sobject, records)
                count = state.requests_seen
            malformed = state.faults.hits(Fault.MALFORMED, count)
            return _query_page(state, version, locator, 0, _batch_size(request, state), malformed)

        return query

    async def query_more(request: Request) -> Response:
        version = _version(request)
        locator, _, offset = str(request.path_params["locator"]).rpartition("-")
        with state.lock:
            cursor = state.cursors.get(locator)
        if cursor is None or not offset.isdigit():
            _authorise(request, state)
            raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        await _admit(request, state, cursor.sobject)
        malformed = state.faults.hits(Fault.MALFORMED, state.requests_seen)
        return _query_page(state, version, locator, int(offset), _batch_size(request, state), malformed)

    async def create_job(request: Request) -> Response:
        version = _version(request)
        try:
            body = await request.json()
        except ValueError:
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Unexpected character in request body") from None
        operation = body.get("operation") if isinstance(body, dict) else None
        if operation not in ("query", "queryAll"):
            raise SalesforceError(400, "INVALIDJOB", "Invalid value for operation: expected query or queryAll")
        if body.get("contentType", "CSV") != "CSV":
            raise SalesforceError(400, "INVALIDJOB", "Only contentType CSV is supported for query jobs")
        soql = parse_soql(str(body.get("query", "")))
        await _admit(request, state, soql.sobject)
        unsupported = [
            reason
            for reason, present in (
                ("aggregate functions such as COUNT()", soql.count),
                ("ORDER BY", soql.order_by is not None),
                ("LIMIT", soql.limit is not None),
                ("compound fields", any(spec.type in COMPOUND_TYPES for spec in soql.fields)),
            )
            if present
        ]
        if unsupported:
            raise SalesforceError(
                400, "API_ERROR", f"Bulk API 2.0 query jobs don't support {', '.join(unsupported)}: {soql.text}"
            )
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        job_id = state.new_id("750")
        with state.lock:
            rows = run_query(state.org, soql, include_deleted=operation == "queryAll")
            columns = [spec.name for spec in soql.fields]
            csv_rows = [[csv_value(row.get(name)) for name in columns] for row in rows]
            info = {
                "id": job_id,
                "operation": operation,
                "object": soql.sobject,
                "createdById": USER_ID,
                "createdDate": now,
                "systemModstamp": now,
                "state": "UploadComplete",
                "concurrencyMode": "Parallel",
                "contentType": "CSV",
                "apiVersion": float(version[1:]),
                "lineEnding": "LF",
                "columnDelimiter": "COMMA",
            }
            polls = state.faults.bulk_polls_in_progress
            state.bulk_jobs_created += 1
            state.jobs[job_id] = BulkJob(info, soql.sobject, columns, csv_rows, polls)
        return JSONResponse(info)

    def job_or_404(request: Request) -> BulkJob:
        job = state.jobs.get(str(request.path_params["job_id"]))
        if job is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    async def job(request: Request) -> Response:
        _version(request)
        await _admit(request, state)
        body = await request.json() if request.method == "PATCH" else {}
        with state.lock:
            bulk_job = job_or_404(request)
            if request.method == "DELETE":
                state.jobs.pop(bulk_job.info["id"], None)
                return Response(status_code=204)
            if request.method == "PATCH":
                if not isinstance(body, dict) or body.get("state") != "Aborted":
                    raise SalesforceError(400, "INVALIDJOBSTATE", "Only state Aborted can be set on a query job")
                bulk_job.info["state"] = "Aborted"
                return JSONResponse(bulk_job.info)
            if bulk_job.info["state"] in ("UploadComplete", "InProgress"):
                if bulk_job.polls_left > 0:
                    bulk_job.polls_left -= 1
                    bulk_job.info["state"] = "InProgress"
                else:
                    bulk_job.info["state"] = "JobComplete"
            complete = bulk_job.info["state"] == "JobComplete"
            return JSONResponse(
                {
                    **bulk_job.info,
                    "jobType": "V2Query",
                    "numberRecordsProcessed": len(bulk_job.rows) if complete else 0,
                    "retries": 0,
                    "totalProcessingTime": 42 if complete else 0,
                }
            )

    async def results(request: Request) -> Response:
        _version(request)
        await _admit(request, state)
        with state.lock:
            bulk_job = job_or_404(request)
            if bulk_job.info["state"] != "JobComplete":
                raise SalesforceError(
                    400, "INVALIDJOBSTATE", f"Job {bulk_job.info['id']} is not complete: {bulk_job.info['state']}"
                )
            params = request.query_params
            max_records = params.get("maxRecords", "50000")
            if not max_records.isdigit() or int(max_records) < 1:
                raise SalesforceError(400, "INVALIDREQUEST", "maxRecords must be a positive integer")
            try:
                offset = int(base64.b64decode(params["locator"] + "==").decode()) if "locator" in params else 0
            except ValueError:
                raise SalesforceError(400, "INVALIDREQUEST", "Invalid locator") from None
            chunk = bulk_job.rows[offset : offset + int(max_records)]
            end = offset + len(chunk)
            locator = base64.b64encode(str(end).encode()).decode().rstrip("=") if end < len(bulk_job.rows) else "null"
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
            writer.writerow(bulk_job.columns)
            writer.writerows(chunk)
        response = Response(buffer.getvalue().encode(), media_type="text/csv; charset=UTF-8")
        response.headers["Sforce-Locator"] = locator
        response.headers["Sforce-NumberOfRecords"] = str(len(chunk))
        return response

    data = "/services/data/{version}"
    app = Starlette(
        routes=[
            Route("/services/oauth2/token", handled(token), methods=["POST"]),
            Route("/services/data", handled(versions)),
            Route(f"{data}/sobjects", handled(global_describe)),
            Route(f"{data}/sobjects/{{sobject}}/describe", handled(describe)),
            Route(f"{data}/sobjects/{{sobject}}/{{record_id}}", handled(record), methods=["GET", "PATCH", "DELETE"]),
            Route(f"{data}/query", handled(query_endpoint(include_deleted=False))),
            Route(f"{data}/queryAll", handled(query_endpoint(include_deleted=True))),
            Route(f"{data}/query/{{locator}}", handled(query_more)),
            Route(f"{data}/queryAll/{{locator}}", handled(query_more)),
            Route(f"{data}/jobs/query", handled(create_job), methods=["POST"]),
            Route(f"{data}/jobs/query/{{job_id}}", handled(job), methods=["GET", "PATCH", "DELETE"]),
            Route(f"{data}/jobs/query/{{job_id}}/results", handled(results)),
        ]
    )
    app.state.salesforce = state
    return app
