"""The delivery engine every destination shares: :func:`deliver`.

Per batch of at most the channel's ``max_batch_size`` deliveries:

1. One query reads, for every member, the send log row of this (campaign, member, variant, action, refresh), the
   member's consent for the destination's channel in ``"{tenant}".customers`` now, whether their address is
   suppressed, and their identifiers (matched against the erasure tombstones read once per run).
2. Members already in the send log are skipped (idempotence). A row still ``sending`` was left by a run that died
   between writing it and recording the provider's answer: it is never sent again automatically (at most once); it
   becomes ``unconfirmed`` and is dead-lettered for support to resend deliberately.
3. For ``add``: members whose consent is ``denied``, who are suppressed, whose profile is gone or who match an erasure
   tombstone are dropped. A ``remove`` is never held back by consent or suppression (taking someone out of an audience
   is what an opt-out asks for).
4. The rest are written ``sending`` and committed BEFORE the provider is called; then the answer is recorded.

Requests go through an in-process token bucket (``requests_per_second``). A :class:`RetryableSendError` is retried
with exponential backoff and jitter, waiting at least its ``retry_after``; after ``max_attempts`` (or a
:class:`SendError`) the batch's members are ``failed`` and dead-lettered as ``activation_failed``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from psycopg import Connection, sql

from plugins.activation.dead_letters import dead_letter, is_secret_setting, non_secret_settings
from plugins.activation.schema import ensure_schema
from plugins.activation.suppressions import normalize_address
from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.core.layout import validate_name
from plugins.core.redaction import redact_text
from plugins.descriptors import (
    ActivatorDescriptor,
    Delivery,
    MemberOutcome,
    MemberResult,
    RetryableSendError,
    Sender,
    SendError,
)

if TYPE_CHECKING:
    from plugins.core.storage import ObjectStore

logger = logging.getLogger(__name__)

Action = Literal["add", "remove"]
INTERRUPTED = "interrupted; may or may not have been delivered"
# Identifier columns of "customers" a tombstone type is matched against (as the segment exports do): a scalar and a
# list column; any other type T (stripe_customer, ...) is matched against the list column T_ids.
TOMBSTONE_COLUMNS = {"email": ("email", "emails"), "phone": ("phone", "phones")}
_TEMP_TOMBSTONES = "cdp_activation_tombstones"


class ActivationError(CdpError):
    """A delivery that cannot run as asked (no customers table, a bad setting, an unknown action)."""


class ActivationBusyError(ActivationError):
    """Another run is delivering the same campaign to the same destination right now."""


@dataclass(frozen=True)
class DeliverySettings:
    """How :func:`deliver` batches, paces and retries. ``max_batch_size`` and ``requests_per_second`` override the
    destination's limits (only downwards for the batch size: a provider's maximum is a maximum)."""

    max_batch_size: int | None = None
    requests_per_second: float | None = None
    max_attempts: int = 5  # Tries per request, the first included.
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_retry_after_seconds: float = 600.0  # A provider asking to wait longer than this fails the batch instead.
    dry_run_sample_size: int = 10

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ActivationError(f"max_attempts must be 1 or more, not {self.max_attempts}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ActivationError(f"max_batch_size must be 1 or more, not {self.max_batch_size}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ActivationError(f"requests_per_second must be more than 0, not {self.requests_per_second}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DeliverySettings:
        """Settings from a campaign's or command's mapping; an unknown name is an :class:`ActivationError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ActivationError(f"unknown delivery setting '{unknown[0]}'; settings: {', '.join(sorted(names))}")
        return cls(**dict(values))

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before retry number ``attempt`` (1-based): base * 2^(n-1) capped, +/- 50% jitter, and never less
        than what the provider asked for."""
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        jittered = delay * random.uniform(0.5, 1.5)  # noqa: S311  # jitter, not cryptography
        return float(max(jittered, retry_after or 0.0))


class TokenBucket:
    """An in-process token bucket: at most ``rate`` requests per second on average, bursts up to ``capacity``."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()

    def acquire(self) -> float:
        """Take one token, waiting for it if needed; returns how long it waited."""
        waited = 0.0
        while True:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return waited
            wait = (1 - self.tokens) / self.rate
            self.sleep(wait)
            waited += wait


@dataclass
class DeliveryReport:
    """What one :func:`deliver` run did, in members. ``sent`` = handed to the provider and answered (``accepted`` +
    ``rejected``); ``would_send`` and ``dry_run_sample`` are a dry run's (nothing sent, nothing logged as sent)."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    skipped_consent: int = 0
    skipped_suppressed: int = 0
    skipped_erased: int = 0
    skipped_no_profile: int = 0
    skipped_already_sent: int = 0
    unconfirmed: int = 0
    would_send: int = 0
    requests: int = 0
    retries: int = 0
    run_id: int | None = None
    dry_run: bool = False
    dead_letters: list[str] = field(default_factory=list)  # DLQ keys written
    dry_run_sample: list[Delivery] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The counters (what ``activation_runs.counts`` keeps)."""
        names = (
            "sent",
            "accepted",
            "rejected",
            "failed",
            "skipped_consent",
            "skipped_suppressed",
            "skipped_erased",
            "skipped_no_profile",
            "skipped_already_sent",
            "unconfirmed",
            "would_send",
            "requests",
            "retries",
        )
        return {name: int(getattr(self, name)) for name in names}

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.counts(),
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "dead_letters": list(self.dead_letters),
            "dry_run_sample": [
                {"member_id": d.member_id, "variant": d.variant, "idempotency_key": d.idempotency_key}
                for d in self.dry_run_sample
            ],
        }


def _tombstone_pairs(tombstones: Any) -> set[tuple[str, str]]:
    """``(id_type, id_value)`` pairs from an Arrow table with those columns or an iterable of pairs."""
    if hasattr(tombstones, "to_pydict"):
        columns = tombstones.select(["id_type", "id_value"]).to_pydict()
        return {(str(t), str(v)) for t, v in zip(columns["id_type"], columns["id_value"], strict=True) if t and v}
    return {(str(t), str(v)) for t, v in tombstones if t and v}


def _batches(deliveries: Iterable[Delivery], size: int) -> Iterator[list[Delivery]]:
    iterator = iter(deliveries)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@dataclass
class _Run:
    """One run's fixed facts: who, where, and the SQL names."""

    conn: Connection[Any]
    tenant: str
    campaign: str
    destination: ActivatorDescriptor
    sender: Sender
    refresh_id: int
    action: Action
    settings: DeliverySettings
    sender_settings: Mapping[str, Any]
    secrets: list[str]
    tombstones: set[tuple[str, str]]
    customer_columns: dict[str, str]
    dlq: ObjectStore | None
    resend: bool
    sleep: Callable[[float], None]
    bucket: TokenBucket
    report: DeliveryReport

    def table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.tenant), sql.Identifier(name))

    @property
    def tombstone_types(self) -> set[str]:
        return {id_type for id_type, _value in self.tombstones}


def _customer_columns(conn: Connection[Any], tenant: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'customers'",
        (tenant,),
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _identifier_columns(run: _Run) -> list[str]:
    """The customers columns the tombstones of this run can match."""
    wanted: list[str] = []
    for id_type in sorted(run.tombstone_types):
        scalar, array = TOMBSTONE_COLUMNS.get(id_type, (None, f"{id_type}_ids"))
        wanted += [c for c in (scalar, array) if c is not None and c in run.customer_columns]
    return list(dict.fromkeys(wanted))


def _member_identifiers(delivery: Delivery, row: Mapping[str, Any], run: _Run) -> set[tuple[str, str]]:
    """Every identifier of a member a tombstone could name: the delivery's own email and phone, and their profile's."""
    found: set[tuple[str, str]] = set()

    def add(id_type: str, value: Any) -> None:
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None or item == "":
                continue
            text = str(item).strip()
            found.add((id_type, text.lower() if id_type == "email" else text))

    add("email", delivery.columns.get("email"))
    add("phone", delivery.columns.get("phone"))
    for id_type in run.tombstone_types:
        scalar, array = TOMBSTONE_COLUMNS.get(id_type, (None, f"{id_type}_ids"))
        for column in (scalar, array):
            if column is not None and column in row:
                add(id_type, row[column])
    return found


def _addresses(channel: str, delivery: Delivery) -> tuple[str | None, str | None]:
    email, phone = delivery.columns.get("email"), delivery.columns.get("phone")
    return (
        normalize_address(channel if channel == "email" else "ads", str(email)) if email else None,
        normalize_address("sms", str(phone)) if phone else None,
    )


def _check(run: _Run, batch: Sequence[Delivery]) -> dict[tuple[str, str], dict[str, Any]]:
    """The one query per batch: send log status, profile, consent, suppression and identifiers of every member."""
    channel = run.destination.channel
    consent_column = f"consent_{channel}"
    identifier_columns = _identifier_columns(run)
    extra = [sql.SQL(", c.{}").format(sql.Identifier(name)) for name in identifier_columns]
    consent = (
        sql.SQL("c.{}").format(sql.Identifier(consent_column))
        if consent_column in run.customer_columns
        else sql.SQL("NULL::text")
    )
    emails, phones = zip(*(_addresses(channel, d) for d in batch), strict=True)
    # Each lookup is a LATERAL ... LIMIT 1 by primary key: a parameterised index probe per member whatever the
    # statistics say (a send log growing within one run is never analysed in time, and a hash join over a million
    # customers per batch would read them all each time).
    query = sql.SQL(
        "SELECT b.customer_id, b.variant, l.status, c.customer_id IS NOT NULL AS has_profile, {consent} AS consent, "
        "EXISTS (SELECT 1 FROM {suppressions} s WHERE s.channel = %(channel)s "
        "AND s.address = ANY(ARRAY[b.email, b.phone])) AS suppressed{extra} "
        "FROM unnest(%(ids)s::text[], %(variants)s::text[], %(emails)s::text[], %(phones)s::text[]) "
        "AS b(customer_id, variant, email, phone) "
        "LEFT JOIN LATERAL (SELECT * FROM {customers} c WHERE c.customer_id = b.customer_id LIMIT 1) c ON true "
        "LEFT JOIN LATERAL (SELECT l.status FROM {send_log} l WHERE l.campaign = %(campaign)s "
        "AND l.customer_id = b.customer_id AND l.variant = b.variant AND l.action = %(action)s "
        "AND l.refresh_id = %(refresh_id)s LIMIT 1) l ON true"
    ).format(
        consent=consent,
        suppressions=run.table("suppressions"),
        extra=sql.SQL("").join(extra),
        customers=run.table("customers"),
        send_log=run.table("send_log"),
    )
    params = {
        "channel": channel,
        "ids": [d.member_id for d in batch],
        "variants": [d.variant for d in batch],
        "emails": list(emails),
        "phones": list(phones),
        "campaign": run.campaign,
        "action": run.action,
        "refresh_id": run.refresh_id,
    }
    with run.conn.cursor() as cursor:
        cursor.execute(query, params)
        names = [column.name for column in cursor.description or []]
        return {(str(row[0]), str(row[1])): dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def _claim(run: _Run, batch: Sequence[Delivery], run_id: int) -> set[tuple[str, str]]:
    """Write the batch ``sending`` and commit, before the provider hears of it; returns the keys this run claimed (a
    row another writer holds is not claimed). With ``resend``, ``failed`` and ``unconfirmed`` rows are claimed too."""
    resend_condition = (
        sql.SQL("WHERE {}.status IN ('failed', 'unconfirmed')").format(run.table("send_log"))
        if run.resend
        else sql.SQL("WHERE false")
    )
    with run.conn.transaction():
        rows = run.conn.execute(
            sql.SQL(
                "INSERT INTO {send_log} AS l (campaign, customer_id, variant, action, refresh_id, run_id, status, "
                "attempts, updated_at) "
                "SELECT %(campaign)s, b.customer_id, b.variant, %(action)s, %(refresh_id)s, %(run_id)s, 'sending', 1, "
                "now() FROM unnest(%(ids)s::text[], %(variants)s::text[]) AS b(customer_id, variant) "
                "ON CONFLICT (campaign, customer_id, variant, action, refresh_id) DO UPDATE SET status = 'sending', "
                "run_id = EXCLUDED.run_id, attempts = l.attempts + 1, reason = NULL, updated_at = now() {resend} "
                "RETURNING customer_id, variant"
            ).format(send_log=run.table("send_log"), resend=resend_condition),
            {
                "campaign": run.campaign,
                "action": run.action,
                "refresh_id": run.refresh_id,
                "run_id": run_id,
                "ids": [d.member_id for d in batch],
                "variants": [d.variant for d in batch],
            },
        ).fetchall()
    return {(str(customer_id), str(variant)) for customer_id, variant in rows}


def _record(
    run: _Run,
    batch: Sequence[Delivery],
    statuses: Sequence[tuple[str, str, str]],
    *,
    only_status: str | None = None,
) -> None:
    """Record ``(status, reason, provider_reference)`` per delivery of ``batch`` and commit; with ``only_status``
    only rows still in that status change."""
    # An upsert on rows that exist: it finds each by the primary key's index, where an UPDATE ... FROM unnest() is
    # planned from statistics the growing send log does not have yet (a sequential scan per member).
    guard = sql.SQL("WHERE l.status = {}").format(sql.Literal(only_status)) if only_status else sql.SQL("")
    with run.conn.transaction():
        run.conn.execute(
            sql.SQL(
                "INSERT INTO {send_log} AS l (campaign, customer_id, variant, action, refresh_id, status, reason, "
                "provider_reference, updated_at) "
                "SELECT %(campaign)s, u.customer_id, u.variant, %(action)s, %(refresh_id)s, u.status, "
                "NULLIF(u.reason, ''), NULLIF(u.reference, ''), now() "
                "FROM unnest(%(ids)s::text[], %(variants)s::text[], %(statuses)s::text[], %(reasons)s::text[], "
                "%(references)s::text[]) AS u(customer_id, variant, status, reason, reference) "
                "ON CONFLICT (campaign, customer_id, variant, action, refresh_id) DO UPDATE SET "
                "status = EXCLUDED.status, reason = EXCLUDED.reason, provider_reference = EXCLUDED.provider_reference, "
                "updated_at = EXCLUDED.updated_at {guard}"
            ).format(send_log=run.table("send_log"), guard=guard),
            {
                "ids": [d.member_id for d in batch],
                "variants": [d.variant for d in batch],
                "statuses": [s[0] for s in statuses],
                "reasons": [s[1] for s in statuses],
                "references": [s[2] for s in statuses],
                "campaign": run.campaign,
                "action": run.action,
                "refresh_id": run.refresh_id,
            },
        )


def _dead_letter(run: _Run, members: Sequence[Delivery], status: str, reason: str, run_id: int) -> None:
    if not members:
        return
    if run.dlq is None:
        log_event(
            logger,
            "activation_dead_letters_not_written",
            logging.WARNING,
            tenant=run.tenant,
            campaign=run.campaign,
            destination=run.destination.name,
            members=len(members),
            reason="no DLQ store given",
        )
        return
    written = dead_letter(
        run.dlq,
        run.tenant,
        campaign=run.campaign,
        destination=run.destination.name,
        action=run.action,
        refresh_id=run.refresh_id,
        run_id=run_id,
        status=status,
        reason=reason,
        deliveries=members,
        settings=non_secret_settings(run.destination, run.sender_settings),
    )
    run.report.dead_letters.extend(batch.key for batch in written)


def _send(run: _Run, batch: Sequence[Delivery]) -> list[MemberResult]:
    """One request with the rate limit and retries; raises SendError when the provider refused it for good or the
    retries ran out."""
    call = run.sender.add if run.action == "add" else run.sender.remove
    attempt = 1
    while True:
        run.bucket.acquire()
        run.report.requests += 1
        try:
            return list(call(batch))
        except RetryableSendError as exc:
            message = redact_text(str(exc), run.secrets)
            if attempt >= run.settings.max_attempts:
                raise SendError(f"gave up after {attempt} attempts: {message}") from None
            if exc.retry_after is not None and exc.retry_after > run.settings.max_retry_after_seconds:
                raise SendError(
                    f"the provider asked to wait {exc.retry_after:g}s, more than max_retry_after_seconds "
                    f"({run.settings.max_retry_after_seconds:g}s): {message}"
                ) from None
            delay = run.settings.backoff_delay(attempt, exc.retry_after)
            log_event(
                logger,
                "activation_retry",
                logging.WARNING,
                tenant=run.tenant,
                campaign=run.campaign,
                destination=run.destination.name,
                attempt=attempt,
                members=len(batch),
                retry_after=exc.retry_after,
                delay=round(delay, 3),
                error=message,
            )
            run.report.retries += 1
            run.sleep(delay)
            attempt += 1


def _deliver_batch(run: _Run, batch: list[Delivery], run_id: int, dry_run: bool) -> None:
    report = run.report
    unique: dict[tuple[str, str], Delivery] = {}
    for delivery in batch:
        if (delivery.member_id, delivery.variant) in unique:
            report.skipped_already_sent += 1  # The same member twice in one input: sent once.
        else:
            unique[(delivery.member_id, delivery.variant)] = delivery
    found = _check(run, list(unique.values()))
    to_send: list[Delivery] = []
    interrupted: list[Delivery] = []
    for key, delivery in unique.items():
        row = found[key]
        status = row["status"]
        if status == "sending":
            interrupted.append(delivery)
            continue
        if status is not None and not (run.resend and status in ("failed", "unconfirmed")):
            report.skipped_already_sent += 1
            continue
        if run.action == "add":
            if run.tombstones and _member_identifiers(delivery, row, run) & run.tombstones:
                report.skipped_erased += 1
                continue
            if not row["has_profile"]:
                report.skipped_no_profile += 1
                continue
            if row["consent"] == "denied":
                report.skipped_consent += 1
                continue
            if row["suppressed"]:
                report.skipped_suppressed += 1
                continue
        to_send.append(delivery)
    if interrupted and not dry_run:
        _record(run, interrupted, [("unconfirmed", INTERRUPTED, "")] * len(interrupted), only_status="sending")
        _dead_letter(run, interrupted, "unconfirmed", INTERRUPTED, run_id)
    report.unconfirmed += len(interrupted)
    if dry_run:
        report.would_send += len(to_send)
        room = run.settings.dry_run_sample_size - len(report.dry_run_sample)
        report.dry_run_sample.extend(to_send[: max(room, 0)])
        return
    if not to_send:
        return
    claimed = _claim(run, to_send, run_id)
    report.skipped_already_sent += len(to_send) - len(claimed)
    to_send = [d for d in to_send if (d.member_id, d.variant) in claimed]
    if not to_send:
        return
    try:
        results = _send(run, to_send)
    except SendError as exc:
        reason = redact_text(str(exc), run.secrets)
        _record(run, to_send, [("failed", reason, "")] * len(to_send))
        _dead_letter(run, to_send, "failed", reason, run_id)
        report.failed += len(to_send)
        log_event(
            logger,
            "activation_batch_failed",
            logging.ERROR,
            tenant=run.tenant,
            campaign=run.campaign,
            destination=run.destination.name,
            members=len(to_send),
            error=reason,
        )
        return
    except BaseException as exc:  # A sender bug or an interrupt: whether the provider got it is unknown.
        reason = f"{INTERRUPTED} (the sender raised {type(exc).__name__})"
        _record(run, to_send, [("unconfirmed", reason, "")] * len(to_send))
        _dead_letter(run, to_send, "unconfirmed", reason, run_id)
        report.unconfirmed += len(to_send)
        raise
    by_member = {result.member_id: result for result in results}
    statuses: list[tuple[str, str, str]] = []
    missing: list[Delivery] = []
    for delivery in to_send:
        result = by_member.get(delivery.member_id)
        if result is None:
            statuses.append(("failed", "the destination returned no result for this member", ""))
            missing.append(delivery)
        elif result.outcome is MemberOutcome.ACCEPTED:
            statuses.append(("accepted", "", result.provider_reference))
            report.accepted += 1
        else:
            statuses.append(("rejected", redact_text(result.reason, run.secrets), result.provider_reference))
            report.rejected += 1
    _record(run, to_send, statuses)
    report.sent += len(to_send) - len(missing)
    report.failed += len(missing)
    _dead_letter(run, missing, "failed", "the destination returned no result for this member", run_id)


def deliver(
    conn: Connection[Any],
    tenant: str,
    *,
    campaign: str,
    destination: ActivatorDescriptor,
    sender: Sender,
    refresh_id: int,
    action: Action,
    deliveries: Iterable[Delivery],
    dry_run: bool = False,
    settings: DeliverySettings | None = None,
    tombstones: Any = (),
    dlq: ObjectStore | None = None,
    sender_settings: Mapping[str, Any] | None = None,
    resend: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryReport:
    """Send ``deliveries`` to ``destination`` through ``sender`` (see the module docstring); returns the counts.

    ``conn`` is committed as the send log is written (call it outside a transaction of your own: an open one is
    committed first). ``tombstones`` are the tenant's erasure tombstones, ``(id_type, id_value)`` pairs or an Arrow
    table with those columns (the segment exports' ``read_tombstones``). ``dlq`` is where failed and unconfirmed
    members go as ``activation_failed`` (with ``sender_settings`` minus its secrets, so ``cdp dlq reprocess`` can
    send them again). ``resend`` sends members whose send log says ``failed`` or ``unconfirmed`` again (the DLQ
    reprocess). A dry run writes nothing but its ``activation_runs`` row: counts and a sample.
    """
    validate_name("tenant", tenant)
    conn.commit()  # The send log is committed as it is written: an open transaction of the caller's goes first.
    autocommit = conn.autocommit
    conn.autocommit = True  # Each write below is its own transaction, committed when its block ends.
    try:
        return _deliver(
            conn,
            tenant,
            campaign=campaign,
            destination=destination,
            sender=sender,
            refresh_id=refresh_id,
            action=action,
            deliveries=deliveries,
            dry_run=dry_run,
            settings=settings,
            tombstones=tombstones,
            dlq=dlq,
            sender_settings=sender_settings,
            resend=resend,
            sleep=sleep,
        )
    finally:
        conn.autocommit = autocommit


def _deliver(
    conn: Connection[Any],
    tenant: str,
    *,
    campaign: str,
    destination: ActivatorDescriptor,
    sender: Sender,
    refresh_id: int,
    action: Action,
    deliveries: Iterable[Delivery],
    dry_run: bool,
    settings: DeliverySettings | None,
    tombstones: Any,
    dlq: ObjectStore | None,
    sender_settings: Mapping[str, Any] | None,
    resend: bool,
    sleep: Callable[[float], None],
) -> DeliveryReport:
    if action not in ("add", "remove"):
        raise ActivationError(f"action must be 'add' or 'remove', not '{action}'")
    settings = settings or DeliverySettings()
    limits = destination.limits
    batch_size = min(limits.max_batch_size, settings.max_batch_size or limits.max_batch_size)
    rate = settings.requests_per_second or limits.requests_per_second
    sender_settings = sender_settings or {}
    secrets = [str(v) for k, v in sender_settings.items() if isinstance(v, str) and is_secret_setting(destination, k)]
    ensure_schema(conn, tenant)
    customer_columns = _customer_columns(conn, tenant)
    if not customer_columns:
        raise ActivationError(
            f"no customers table in schema '{tenant}'; load the customers first ('cdp load run --tenant {tenant}')"
        )
    locked = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext('cdp_activation'), hashtext(%s))",
        (f"{tenant}/{campaign}/{destination.name}",),
    ).fetchone()
    if not locked or not locked[0]:
        raise ActivationBusyError(
            f"another run is delivering campaign '{campaign}' to '{destination.name}'; wait for it to finish"
        )
    report = DeliveryReport(dry_run=dry_run)
    run = _Run(
        conn=conn,
        tenant=tenant,
        campaign=campaign,
        destination=destination,
        sender=sender,
        refresh_id=refresh_id,
        action=action,
        settings=settings,
        sender_settings=sender_settings,
        secrets=secrets,
        tombstones=_tombstone_pairs(tombstones),
        customer_columns=customer_columns,
        dlq=dlq,
        resend=resend,
        sleep=sleep,
        bucket=TokenBucket(rate, sleep=sleep),
        report=report,
    )
    status = "failed"
    try:
        with conn.transaction():
            row = conn.execute(
                sql.SQL(
                    "INSERT INTO {} (campaign, destination, refresh_id, dry_run) VALUES (%s, %s, %s, %s) "
                    "RETURNING run_id"
                ).format(run.table("activation_runs")),
                (campaign, destination.name, refresh_id, dry_run),
            ).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row.
        report.run_id = run_id = int(row[0])
        log_event(
            logger,
            "activation_started",
            tenant=tenant,
            campaign=campaign,
            destination=destination.name,
            action=action,
            refresh_id=refresh_id,
            run_id=run_id,
            dry_run=dry_run,
            batch_size=batch_size,
            requests_per_second=rate,
        )
        for batch in _batches(deliveries, batch_size):
            _deliver_batch(run, batch, run_id, dry_run)
        status = "completed"
    finally:
        _finish(run, status)
    return report


def _finish(run: _Run, status: str) -> None:
    report = run.report
    try:
        if report.run_id is not None:
            with run.conn.transaction():
                run.conn.execute(
                    sql.SQL("UPDATE {} SET finished_at = %s, status = %s, counts = %s::jsonb WHERE run_id = %s").format(
                        run.table("activation_runs")
                    ),
                    (datetime.now(UTC), status, orjson.dumps(report.counts()).decode(), report.run_id),
                )
    finally:
        run.conn.execute(
            "SELECT pg_advisory_unlock(hashtext('cdp_activation'), hashtext(%s))",
            (f"{run.tenant}/{run.campaign}/{run.destination.name}",),
        )
        log_event(
            logger,
            "activation_finished",
            tenant=run.tenant,
            campaign=run.campaign,
            destination=run.destination.name,
            run_id=report.run_id,
            status=status,
            **report.counts(),
        )


__all__ = [
    "INTERRUPTED",
    "ActivationBusyError",
    "ActivationError",
    "DeliveryReport",
    "DeliverySettings",
    "TokenBucket",
    "deliver",
]
