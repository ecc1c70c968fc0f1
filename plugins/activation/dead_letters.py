"""``activation_failed`` dead letters: members a destination did not take, with what a resend needs.

One entry per member, in the DLQ layout under provider = the destination's name and stream = the campaign (made a
valid stream name). ``record`` is the delivery (``member_id``, ``idempotency_key``, ``variant``, ``columns``,
``content``); ``context`` holds ``campaign``, ``destination``, ``action``, ``refresh_id``, ``run_id``, ``status``
(``failed`` or ``unconfirmed``) and the destination's settings without its secrets, so ``cdp dlq reprocess`` can
send the members again through :func:`plugins.activation.deliver`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType
from plugins.core.layout import sanitize_stream_name
from plugins.core.raw_zone import WrittenBatch
from plugins.core.redaction import is_secret_name
from plugins.core.storage import ObjectStore
from plugins.descriptors import ActivatorDescriptor, Delivery, RenderedContent


def is_secret_setting(destination: ActivatorDescriptor, key: str) -> bool:
    """Whether the destination's setting ``key`` holds a secret: marked ``secret`` (or ``writeOnly``) in its settings
    schema, or named like one (token, password, key...)."""
    properties = destination.settings_schema.get("properties", {})
    spec = properties.get(key, {}) if isinstance(properties, Mapping) else {}
    marked = isinstance(spec, Mapping) and bool(spec.get("secret") or spec.get("writeOnly"))
    return marked or is_secret_name(key)


def non_secret_settings(destination: ActivatorDescriptor, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without the secret ones: what a dead letter may keep."""
    return {key: value for key, value in settings.items() if not is_secret_setting(destination, key)}


def delivery_record(delivery: Delivery) -> dict[str, Any]:
    """A delivery as the JSON object a dead letter keeps."""
    content = delivery.content
    return {
        "member_id": delivery.member_id,
        "idempotency_key": delivery.idempotency_key,
        "variant": delivery.variant,
        "columns": dict(delivery.columns),
        "content": (
            {"subject": content.subject, "text": content.text, "html": content.html} if content is not None else None
        ),
    }


def delivery_from_record(record: Mapping[str, Any]) -> Delivery:
    """The delivery a dead letter kept (:func:`delivery_record` read back)."""
    content = record.get("content")
    return Delivery(
        member_id=str(record["member_id"]),
        columns=dict(record.get("columns") or {}),
        idempotency_key=str(record.get("idempotency_key") or ""),
        variant=str(record.get("variant") or ""),
        content=(
            RenderedContent(subject=str(content["subject"]), text=str(content["text"]), html=content.get("html"))
            if isinstance(content, Mapping)
            else None
        ),
    )


def dead_letter(
    dlq: ObjectStore,
    tenant: str,
    *,
    campaign: str,
    destination: str,
    action: str,
    refresh_id: int,
    run_id: int,
    status: str,
    reason: str,
    deliveries: Sequence[Delivery],
    settings: Mapping[str, Any],
    retry_count: int = 0,
) -> list[WrittenBatch]:
    """Write ``deliveries`` to the DLQ as ``activation_failed`` (one batch), with what a resend needs."""
    when = datetime.now(UTC)
    context = {
        "campaign": campaign,
        "destination": destination,
        "action": action,
        "refresh_id": refresh_id,
        "run_id": run_id,
        "status": status,
        "settings": dict(settings),
    }
    letters = [
        DeadLetter(
            error_type=ErrorType.ACTIVATION_FAILED,
            error_message=f"{status}: {reason}",
            stream=sanitize_stream_name(campaign),
            record=delivery_record(delivery),
            retry_count=retry_count,
            context=context,
            failed_at=when,
        )
        for delivery in deliveries
    ]
    queue = DeadLetterQueue(dlq, tenant=tenant, provider=destination, run_id=f"activation_{run_id}")
    return queue.write(letters, when=when)
