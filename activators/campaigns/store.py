"""Campaigns and contents in PostgreSQL: definitions (YAML, applied like segments), the status machine, schedules.

Two tables in the tenant's schema (:data:`SCHEMA_STATEMENTS`), the design's model: ``campaigns`` (a destination,
a segment, a content, a schedule, a status) and ``contents`` (subject and body templates, declared variables, A/B
variants). ``campaigns`` also keeps ``last_refresh_id`` (the segment refresh its last finished launch sent) and
``pending_refresh_id`` (a launch that started on a refresh and has not finished: the next launch completes it first).

Functions take an autocommit psycopg connection (``activators.segments.store.connect``), like the segment store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from activators.segments.store import ApplySummary
from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from psycopg import Connection

    from plugins.descriptors import ActivatorDescriptor


class CampaignError(CdpError):
    """A campaign operation that cannot be done; the message says why and what to do."""


class CampaignDefinitionError(CampaignError, ValueError):
    """A campaign or content definition (YAML) that is not valid; one line naming the file and the key."""


class CampaignNotFoundError(CampaignError, LookupError):
    """No campaign (or content) of that name in the tenant."""


class CampaignExistsError(CampaignError):
    """``create`` of a name that is taken (``apply`` updates instead)."""


class CampaignStatusError(CampaignError):
    """A status change the status machine does not allow (e.g. completed -> active)."""


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"


#: The status machine: draft -> scheduled -> active -> paused -> completed, paused -> active, and active ->
#: completed (a campaign whose schedule ended, or a one-off send that finished). Nothing leaves ``completed``.
TRANSITIONS: Mapping[CampaignStatus, frozenset[CampaignStatus]] = {
    CampaignStatus.DRAFT: frozenset({CampaignStatus.SCHEDULED}),
    CampaignStatus.SCHEDULED: frozenset({CampaignStatus.ACTIVE}),
    CampaignStatus.ACTIVE: frozenset({CampaignStatus.PAUSED, CampaignStatus.COMPLETED}),
    CampaignStatus.PAUSED: frozenset({CampaignStatus.ACTIVE, CampaignStatus.COMPLETED}),
    CampaignStatus.COMPLETED: frozenset(),
}

SCHEMA_STATEMENTS: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS {schema}.contents ("
    "id text PRIMARY KEY, name text NOT NULL, subject text, text_body text, html_body text, "
    "variables jsonb NOT NULL DEFAULT '[]', variants jsonb NOT NULL DEFAULT '[]', "
    "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS {schema}.campaigns ("
    "id text PRIMARY KEY, name text NOT NULL, type text NOT NULL, "
    "status text NOT NULL CHECK (status IN ('draft', 'scheduled', 'active', 'paused', 'completed')), "
    "segment text NOT NULL, content_id text REFERENCES {schema}.contents (id), schedule jsonb, budget numeric, "
    "goals jsonb NOT NULL DEFAULT '{{}}', settings jsonb NOT NULL DEFAULT '{{}}', "
    "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), "
    "launched_at timestamptz, last_refresh_id bigint, pending_refresh_id bigint)",
)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CAMPAIGN_KEYS = frozenset({"name", "type", "segment", "content", "status", "schedule", "budget", "goals", "settings"})
_CONTENT_KEYS = frozenset({"name", "subject", "text_body", "html_body", "variables", "variants"})
_VARIANT_KEYS = frozenset({"name", "weight", "subject", "text_body", "html_body"})
_SCHEDULE_KEYS = frozenset({"timezone", "cron", "start_at", "end_at"})
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Problem(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- definitions -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When a campaign launches by itself (``cdp campaign run --due``): ``cron`` read in ``timezone`` (IANA), between
    ``start_at`` and ``end_at`` (aware instants; either may be open)."""

    timezone: str = "UTC"
    cron: str | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "timezone": self.timezone,
            "cron": self.cron,
            "start_at": self.start_at.isoformat() if self.start_at else None,
            "end_at": self.end_at.isoformat() if self.end_at else None,
        }


@dataclass(frozen=True)
class Variant:
    """One A/B variant: its share of the audience (``weight``, relative) and the templates it overrides."""

    name: str
    weight: float
    subject: str | None = None
    text_body: str | None = None
    html_body: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "weight": self.weight}
        for key in ("subject", "text_body", "html_body"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


@dataclass(frozen=True)
class Content:
    """A content: Jinja2 templates (rendered in a sandbox, strict about undefined names), the variables they may use
    (columns of the segment export), and the variants."""

    name: str
    subject: str | None = None
    text_body: str | None = None
    html_body: str | None = None
    variables: tuple[str, ...] = ()
    variants: tuple[Variant, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subject": self.subject,
            "text_body": self.text_body,
            "html_body": self.html_body,
            "variables": list(self.variables),
            "variants": [variant.to_json() for variant in self.variants],
        }


@dataclass(frozen=True)
class Campaign:
    """A campaign definition: ``type`` is the destination's name (``email``, ``facebook``, ...), ``settings`` its
    non-secret settings (an audience id, a sender address); secrets come from the environment, never from here."""

    name: str
    type: str
    segment: str
    content: str | None = None
    status: CampaignStatus = CampaignStatus.DRAFT
    schedule: Schedule | None = None
    budget: Decimal | None = None
    goals: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


def _definition_error(kind: str, name: str, source: str, path: str, problem: str) -> CampaignDefinitionError:
    where = f" ({source})" if source else ""
    at = f"{path}: " if path else ""
    return CampaignDefinitionError(" ".join(f"{kind} {_shown(name)}{where}: {at}{problem}".splitlines()))


def _unknown_keys(path: str, data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise _Problem(path, f"unknown key {_shown(unknown[0])}; the keys are {', '.join(sorted(allowed))}")


def _slug(path: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _Problem(path, "a name is lower-case letters, digits, '_' and '-', at most 63, e.g. 'summer-sale'")
    return value


def _text(path: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Problem(path, f"must be text, not {_shown(value)}")
    if "\x00" in value:
        raise _Problem(path, "a NUL character cannot be stored; remove it")
    return value


def _instant(path: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed: datetime | None = value
    elif isinstance(value, date):
        raise _Problem(path, f"{value.isoformat()} is a date; write a timestamp with an offset, e.g. {value}T00:00:00Z")
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Problem(path, f"{_shown(value)} is not an ISO 8601 timestamp") from None
    else:
        raise _Problem(path, f"{_shown(value)} is not a timestamp")
    if parsed is None or parsed.tzinfo is None:
        raise _Problem(path, f"{_shown(str(value))} has no offset; add one, e.g. 'Z' for UTC")
    return parsed


def parse_schedule(data: Any, *, path: str = "schedule") -> Schedule:
    """A schedule mapping: an IANA ``timezone`` (zoneinfo), a five-field ``cron`` (croniter), ``start_at`` before
    ``end_at``."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from croniter import croniter

    if not isinstance(data, Mapping):
        raise _Problem(path, f"must be a mapping (timezone, cron, start_at, end_at), not {_shown(data)}")
    _unknown_keys(path, data, _SCHEDULE_KEYS)
    timezone = data.get("timezone", "UTC")
    try:
        if not isinstance(timezone, str):
            raise ValueError(timezone)
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problem = f"{_shown(timezone)} is not an IANA time zone (e.g. Europe/Berlin)"
        raise _Problem(f"{path}.timezone", problem) from None
    cron = data.get("cron")
    if cron is not None and (not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron)):
        raise _Problem(f"{path}.cron", f"{_shown(cron)} is not a five-field cron expression (e.g. '0 9 * * 1')")
    start_at = _instant(f"{path}.start_at", data.get("start_at"))
    end_at = _instant(f"{path}.end_at", data.get("end_at"))
    if start_at and end_at and end_at <= start_at:
        raise _Problem(f"{path}.end_at", "must be after start_at")
    return Schedule(timezone, " ".join(cron.split()) if cron else None, start_at, end_at)


def parse_campaign(data: Any, *, source: str = "") -> Campaign:
    """A campaign from its YAML mapping, strictly; CampaignDefinitionError naming ``source`` and the key."""
    raw_name = data.get("name") if isinstance(data, Mapping) else None
    name = raw_name if isinstance(raw_name, str) else "?"
    try:
        if not isinstance(data, Mapping):
            raise _Problem("", "a campaign definition is a YAML mapping (name, type, segment, content, ...)")
        _unknown_keys("", data, _CAMPAIGN_KEYS)
        _slug("name", raw_name)
        kind = _slug("type", data.get("type"))
        segment = _slug("segment", data.get("segment"))
        content = None if data.get("content") is None else _slug("content", data.get("content"))
        status = data.get("status", CampaignStatus.DRAFT.value)
        if status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            raise _Problem("status", f"a definition starts as draft or scheduled, not {_shown(status)}")
        schedule = None if data.get("schedule") is None else parse_schedule(data["schedule"])
        budget = data.get("budget")
        if budget is not None:
            try:
                if isinstance(budget, bool):
                    raise InvalidOperation
                budget = Decimal(str(budget))
                if not budget.is_finite() or budget < 0:
                    raise InvalidOperation
            except InvalidOperation:
                raise _Problem("budget", f"{_shown(data.get('budget'))} is not a non-negative amount") from None
        mappings = {}
        for key in ("goals", "settings"):
            value = data.get(key) or {}
            if not isinstance(value, Mapping) or not all(isinstance(item, str) for item in value):
                raise _Problem(key, f"must be a mapping with text keys, not {_shown(value)}")
            mappings[key] = dict(value)
        return Campaign(
            name=name,
            type=kind,
            segment=segment,
            content=content,
            status=CampaignStatus(status),
            schedule=schedule,
            budget=budget,
            goals=mappings["goals"],
            settings=mappings["settings"],
        )
    except _Problem as problem:
        raise _definition_error("campaign", name, source, problem.path, problem.problem) from None


def _weight(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == float("inf"):
        raise _Problem(path, f"{_shown(value)} is not a positive number")
    return float(value)


def parse_content(data: Any, *, source: str = "") -> Content:
    """A content from its YAML mapping, strictly; the templates are compiled and may use only the declared
    ``variables`` (checked here, so a typo fails when the file is applied, not at the send)."""
    from activators.campaigns.content import check_templates

    raw_name = data.get("name") if isinstance(data, Mapping) else None
    name = raw_name if isinstance(raw_name, str) else "?"
    try:
        if not isinstance(data, Mapping):
            raise _Problem("", "a content definition is a YAML mapping (name, subject, text_body, html_body, ...)")
        _unknown_keys("", data, _CONTENT_KEYS)
        _slug("name", raw_name)
        variables = data.get("variables") or []
        if not isinstance(variables, list):
            raise _Problem("variables", f"must be a list of column names, not {_shown(variables)}")
        for index, variable in enumerate(variables):
            if not isinstance(variable, str) or not _VARIABLE_RE.fullmatch(variable):
                raise _Problem(f"variables[{index}]", f"{_shown(variable)} is not a column name (e.g. first_name)")
        raw_variants = data.get("variants") or []
        if not isinstance(raw_variants, list):
            raise _Problem("variants", f"must be a list of {{name, weight, ...}}, not {_shown(raw_variants)}")
        variants: list[Variant] = []
        for index, raw in enumerate(raw_variants):
            path = f"variants[{index}]"
            if not isinstance(raw, Mapping):
                raise _Problem(path, f"must be a mapping {{name, weight, ...}}, not {_shown(raw)}")
            _unknown_keys(path, raw, _VARIANT_KEYS)
            variant_name = _slug(f"{path}.name", raw.get("name"))
            if any(variant.name == variant_name for variant in variants):
                raise _Problem(f"{path}.name", f"variant {variant_name!r} is named twice")
            variants.append(
                Variant(
                    variant_name,
                    _weight(f"{path}.weight", raw.get("weight", 1)),
                    *(_text(f"{path}.{key}", raw.get(key)) for key in ("subject", "text_body", "html_body")),
                )
            )
        content = Content(
            name=name,
            subject=_text("subject", data.get("subject")),
            text_body=_text("text_body", data.get("text_body")),
            html_body=_text("html_body", data.get("html_body")),
            variables=tuple(dict.fromkeys(variables)),
            variants=tuple(variants),
        )
        problem = check_templates(content)
        if problem is not None:
            raise _Problem(*problem)
        return content
    except _Problem as problem:
        raise _definition_error("content", name, source, problem.path, problem.problem) from None


# -- the status machine ----------------------------------------------------------------------------------------------


def check_transition(name: str, current: CampaignStatus, new: CampaignStatus) -> None:
    """Refuse a status change the machine does not allow, in one line."""
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it is final)"
        raise CampaignStatusError(f"campaign '{name}' is {current}: it cannot become {new} (from {current}: {allowed})")


# -- storage ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCampaign:
    """A row of ``campaigns``."""

    campaign: Campaign
    status: CampaignStatus
    created_at: datetime
    updated_at: datetime
    launched_at: datetime | None
    last_refresh_id: int | None
    pending_refresh_id: int | None

    @property
    def name(self) -> str:
        return self.campaign.name

    def summary(self) -> dict[str, Any]:
        """Stable keys for ``--json``."""
        campaign = self.campaign
        return {
            "name": campaign.name,
            "type": campaign.type,
            "status": self.status.value,
            "segment": campaign.segment,
            "content": campaign.content,
            "schedule": campaign.schedule.to_json() if campaign.schedule else None,
            "budget": None if campaign.budget is None else str(campaign.budget),
            "goals": dict(campaign.goals),
            "settings": dict(campaign.settings),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "launched_at": self.launched_at,
            "last_refresh_id": self.last_refresh_id,
            "pending_refresh_id": self.pending_refresh_id,
        }


def _schema(tenant: str) -> sql.Identifier:
    return sql.Identifier(tenant)


def _table(tenant: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier(name))


def has_tables(conn: Connection[Any], tenant: str) -> bool:
    """Whether the tenant's campaign tables exist (reads create nothing)."""
    row = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, 'campaigns')) IS NOT NULL "
        "AND to_regclass(format('%%I.%%I', %s::text, 'contents')) IS NOT NULL",
        (tenant, tenant),
    ).fetchone()
    return bool(row and row[0])


def ensure_schema(conn: Connection[Any], tenant: str) -> None:
    """Create the tenant's schema, ``contents`` and ``campaigns`` when missing (safe from two processes at once)."""
    from plugins.core.layout import validate_name

    validate_name("tenant", tenant)
    if has_tables(conn, tenant):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdp_campaigns.ddl:{tenant}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_schema(tenant)))
        for statement in SCHEMA_STATEMENTS:
            conn.execute(sql.SQL(statement).format(schema=_schema(tenant)))  # type: ignore[arg-type]


_CAMPAIGN_COLUMNS = (
    "id, type, status, segment, content_id, schedule, budget, goals, settings, created_at, updated_at, launched_at, "
    "last_refresh_id, pending_refresh_id"
)


def _schedule_from_json(data: Mapping[str, Any] | None) -> Schedule | None:
    return None if data is None else parse_schedule(data)


def _stored_campaign(row: Sequence[Any]) -> StoredCampaign:
    status = CampaignStatus(row[2])
    campaign = Campaign(
        name=row[0],
        type=row[1],
        segment=row[3],
        content=row[4],
        status=status,
        schedule=_schedule_from_json(row[5]),
        budget=row[6],
        goals=row[7],
        settings=row[8],
    )
    return StoredCampaign(campaign, status, row[9], row[10], row[11], row[12], row[13])


def _stored_content(row: Sequence[Any]) -> Content:
    return Content(
        name=row[0],
        subject=row[1],
        text_body=row[2],
        html_body=row[3],
        variables=tuple(row[4]),
        variants=tuple(Variant(**variant) for variant in row[5]),
    )


def _not_found(kind: str, tenant: str, name: str) -> CampaignNotFoundError:
    return CampaignNotFoundError(
        f"no {kind} '{name}' in tenant '{tenant}'; cdp campaign list shows the campaigns, cdp campaign apply adds them"
    )


def get_campaign(conn: Connection[Any], tenant: str, name: str, *, for_update: bool = False) -> StoredCampaign:
    """The campaign ``name`` (CampaignNotFoundError when there is none)."""
    row = None
    if has_tables(conn, tenant):
        query = sql.SQL("SELECT {} FROM {} WHERE id = %s {}").format(
            sql.SQL(_CAMPAIGN_COLUMNS), _table(tenant, "campaigns"), sql.SQL("FOR UPDATE" if for_update else "")
        )
        row = conn.execute(query, (name,)).fetchone()
    if row is None:
        raise _not_found("campaign", tenant, name)
    return _stored_campaign(row)


def get_content(conn: Connection[Any], tenant: str, name: str) -> Content:
    """The content ``name`` (CampaignNotFoundError when there is none)."""
    row = None
    if has_tables(conn, tenant):
        query = sql.SQL("SELECT id, subject, text_body, html_body, variables, variants FROM {} WHERE id = %s")
        row = conn.execute(query.format(_table(tenant, "contents")), (name,)).fetchone()
    if row is None:
        raise _not_found("content", tenant, name)
    return _stored_content(row)


def list_campaigns(conn: Connection[Any], tenant: str) -> list[StoredCampaign]:
    """Every campaign, by name."""
    if not has_tables(conn, tenant):
        return []
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(sql.SQL(_CAMPAIGN_COLUMNS), _table(tenant, "campaigns"))
    return [_stored_campaign(row) for row in conn.execute(query).fetchall()]


def list_contents(conn: Connection[Any], tenant: str) -> list[Content]:
    if not has_tables(conn, tenant):
        return []
    query = sql.SQL("SELECT id, subject, text_body, html_body, variables, variants FROM {} ORDER BY id")
    return [_stored_content(row) for row in conn.execute(query.format(_table(tenant, "contents"))).fetchall()]


def _campaign_values(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": campaign.name,
        "type": campaign.type,
        "segment": campaign.segment,
        "content_id": campaign.content,
        "schedule": None if campaign.schedule is None else Jsonb(campaign.schedule.to_json()),
        "budget": campaign.budget,
        "goals": Jsonb(dict(campaign.goals)),
        "settings": Jsonb(dict(campaign.settings)),
    }


def _same_campaign(stored: StoredCampaign, campaign: Campaign) -> bool:
    mine = stored.campaign
    return (
        mine.type == campaign.type
        and mine.segment == campaign.segment
        and mine.content == campaign.content
        and mine.schedule == campaign.schedule
        and mine.budget == campaign.budget
        and dict(mine.goals) == dict(campaign.goals)
        and dict(mine.settings) == dict(campaign.settings)
    )


def _write_content(conn: Connection[Any], tenant: str, content: Content) -> None:
    data = content.to_json()
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, name, subject, text_body, html_body, variables, variants) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, "
            "text_body = excluded.text_body, html_body = excluded.html_body, variables = excluded.variables, "
            "variants = excluded.variants, updated_at = now()"
        ).format(_table(tenant, "contents")),
        (
            content.name,
            content.name,
            content.subject,
            content.text_body,
            content.html_body,
            Jsonb(data["variables"]),
            Jsonb(data["variants"]),
        ),
    )


def settings_env_var(destination: str, key: str) -> str:
    """``CDP_{DESTINATION}_{KEY}``: where a destination's setting (a secret above all) comes from at launch."""
    return "CDP_" + re.sub(r"[^A-Z0-9]+", "_", f"{destination}_{key}".upper())


def _is_secret(destination: ActivatorDescriptor, key: str) -> bool:
    """A setting the destination's schema marks ``secret`` (or ``writeOnly``), or named like one (token, password)."""
    from plugins.core.redaction import is_secret_name

    properties = destination.settings_schema.get("properties", {})
    spec = properties.get(key, {}) if isinstance(properties, Mapping) else {}
    return (isinstance(spec, Mapping) and bool(spec.get("secret") or spec.get("writeOnly"))) or is_secret_name(key)


def _check_references(conn: Connection[Any], tenant: str, campaigns: Sequence[Campaign], contents: set[str]) -> None:
    """Each campaign's destination is registered, and its content is stored or being applied."""
    from plugins.manager import activators

    destinations = activators()
    stored = {content.name for content in list_contents(conn, tenant)}
    for campaign in campaigns:
        if campaign.type not in destinations:
            known = ", ".join(sorted(destinations)) or "none installed"
            raise CampaignDefinitionError(
                f"campaign '{campaign.name}': type '{campaign.type}' is not an activation destination ({known})"
            )
        if campaign.content is not None and campaign.content not in contents | stored:
            raise CampaignDefinitionError(
                f"campaign '{campaign.name}': no content '{campaign.content}'; apply contents/{campaign.content}.yml "
                "with it"
            )
        secret = next((key for key in campaign.settings if _is_secret(destinations[campaign.type], key)), None)
        if secret is not None:
            raise CampaignDefinitionError(
                f"campaign '{campaign.name}': setting '{secret}' is a secret; remove it from the file and set "
                f"{settings_env_var(campaign.type, secret)} instead"
            )
        if campaign.content is None and destinations[campaign.type].content:
            raise CampaignDefinitionError(
                f"campaign '{campaign.name}': a {campaign.type} campaign sends content; name one with content:"
            )


def apply(
    conn: Connection[Any], tenant: str, campaigns: Iterable[Campaign] = (), contents: Iterable[Content] = ()
) -> ApplySummary:
    """Create or update each content and campaign, checked first and written in one transaction (one bad definition
    applies nothing). An update never changes a stored campaign's status, except draft -> scheduled when the file
    says ``status: scheduled``. Stored campaigns without a file are kept (``not_in_files``)."""
    campaigns, contents = list(campaigns), list(contents)
    ensure_schema(conn, tenant)
    _check_references(conn, tenant, campaigns, {content.name for content in contents})
    summary = ApplySummary()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdp_campaigns.apply:{tenant}",))
        stored_contents = {content.name: content for content in list_contents(conn, tenant)}
        for content in contents:
            before = stored_contents.get(content.name)
            if before is not None and before.to_json() == content.to_json():
                summary.unchanged.append(f"content {content.name}")
                continue
            _write_content(conn, tenant, content)
            (summary.updated if before is not None else summary.created).append(f"content {content.name}")
        stored = {item.name: item for item in list_campaigns(conn, tenant)}
        for campaign in campaigns:
            existing = stored.get(campaign.name)
            values = _campaign_values(campaign)
            if existing is None:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, name, type, status, segment, content_id, schedule, budget, goals, "
                        "settings) VALUES (%(id)s, %(id)s, %(type)s, %(status)s, %(segment)s, %(content_id)s, "
                        "%(schedule)s, %(budget)s, %(goals)s, %(settings)s)"
                    ).format(_table(tenant, "campaigns")),
                    {**values, "status": campaign.status.value},
                )
                summary.created.append(campaign.name)
                continue
            launched = existing.last_refresh_id is not None or existing.pending_refresh_id is not None
            for key in ("segment", "type"):
                if launched and getattr(existing.campaign, key) != getattr(campaign, key):
                    # Later launches send the change since the last one: to another audience or destination that
                    # would be meaningless (nobody added, nobody removed where they were sent).
                    raise CampaignDefinitionError(
                        f"campaign '{campaign.name}' was launched with {key} '{getattr(existing.campaign, key)}'; "
                        f"it cannot change to '{getattr(campaign, key)}': define a new campaign"
                    )
            status = existing.status
            if campaign.status is CampaignStatus.SCHEDULED and status is CampaignStatus.DRAFT:
                status = CampaignStatus.SCHEDULED
            if _same_campaign(existing, campaign) and status is existing.status:
                summary.unchanged.append(campaign.name)
                continue
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET type = %(type)s, status = %(status)s, segment = %(segment)s, "
                    "content_id = %(content_id)s, schedule = %(schedule)s, budget = %(budget)s, goals = %(goals)s, "
                    "settings = %(settings)s, updated_at = now() WHERE id = %(id)s"
                ).format(_table(tenant, "campaigns")),
                {**values, "status": status.value},
            )
            summary.updated.append(campaign.name)
        applied = {campaign.name for campaign in campaigns}
        summary.not_in_files.extend(sorted(set(stored) - applied))
    return summary


def create(conn: Connection[Any], tenant: str, campaign: Campaign) -> None:
    """Store a new campaign (CampaignExistsError when the name is taken)."""
    ensure_schema(conn, tenant)
    if campaign.name in {item.name for item in list_campaigns(conn, tenant)}:
        raise CampaignExistsError(
            f"campaign '{campaign.name}' exists in tenant '{tenant}'; cdp campaign apply updates it"
        )
    apply(conn, tenant, [campaign])


def set_status(conn: Connection[Any], tenant: str, name: str, new: CampaignStatus) -> StoredCampaign:
    """Move ``name`` to ``new`` through the status machine (CampaignStatusError for an illegal move)."""
    with conn.transaction():
        stored = get_campaign(conn, tenant, name, for_update=True)
        check_transition(name, stored.status, new)
        conn.execute(
            sql.SQL("UPDATE {} SET status = %s, updated_at = now() WHERE id = %s").format(_table(tenant, "campaigns")),
            (new.value, name),
        )
    return get_campaign(conn, tenant, name)


def record_launch(
    conn: Connection[Any], tenant: str, name: str, *, pending_refresh_id: int | None, last_refresh_id: int | None
) -> None:
    """Record the refresh a launch is sending (``pending``) or has finished sending (``last``, ``launched_at``)."""
    finished = sql.SQL(", launched_at = now()") if pending_refresh_id is None else sql.SQL("")
    conn.execute(
        sql.SQL(
            "UPDATE {} SET pending_refresh_id = %s, last_refresh_id = %s, updated_at = now(){} WHERE id = %s"
        ).format(_table(tenant, "campaigns"), finished),
        (pending_refresh_id, last_refresh_id, name),
    )


# -- schedules -------------------------------------------------------------------------------------------------------


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The first instant after ``after`` at which ``schedule.cron`` fires, evaluated in the schedule's time zone
    (so ``0 9 * * *`` in Europe/Berlin is 09:00 Berlin time in summer and winter), as an aware UTC datetime."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    if schedule.cron is None:
        return None
    start = after.astimezone(ZoneInfo(schedule.timezone))
    fired: datetime = croniter(schedule.cron, start).get_next(datetime)
    return fired.astimezone(UTC)


def due(conn: Connection[Any], tenant: str, now: datetime) -> tuple[list[str], list[str]]:
    """``(to launch, to complete)`` at ``now``: scheduled or active campaigns whose cron fired since their last launch
    (or since ``start_at``, else since they were created) within their window; and the active ones whose ``end_at``
    passed."""
    launch: list[str] = []
    complete: list[str] = []
    for stored in list_campaigns(conn, tenant):
        schedule = stored.campaign.schedule
        if stored.status not in (CampaignStatus.SCHEDULED, CampaignStatus.ACTIVE) or schedule is None:
            continue
        if schedule.end_at is not None and now >= schedule.end_at:
            if stored.status is CampaignStatus.ACTIVE:
                complete.append(stored.name)
            continue
        if schedule.start_at is not None and now < schedule.start_at:
            continue
        since = stored.launched_at or schedule.start_at or stored.created_at
        fired = next_fire(schedule, since)
        if fired is not None and fired <= now:
            launch.append(stored.name)
    return launch, complete
