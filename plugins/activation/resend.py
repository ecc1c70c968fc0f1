"""``cdp dlq reprocess`` of ``activation_failed`` batches: the members are sent again through :func:`deliver`.

Each entry keeps its delivery and, in ``context``, the campaign, destination, action, refresh and the destination's
settings without secrets. The secrets come from the environment, ``CDP_<DESTINATION>_<SETTING>`` (upper case, ``-``
as ``_``: ``CDP_HTTP_AUDIENCE_TOKEN``), so support resends with the credentials of today, never stored ones. The send
log decides who goes: members it records as ``failed`` or ``unconfirmed`` are sent again (``resend``); one the
provider accepted meanwhile is skipped; consent, suppression and erasure are checked again as in any run.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from plugins.activation.dead_letters import delivery_from_record, is_secret_setting
from plugins.activation.delivery import DeliverySettings, deliver
from plugins.core.layout import parse_batch_key
from plugins.core.storage import ObjectStore
from plugins.descriptors import ActivatorDescriptor
from plugins.dlq.reprocess import BatchOutcome


def secret_env_var(destination: str, setting: str) -> str:
    """The environment variable a destination's secret setting is read from on a resend."""
    return f"CDP_{destination}_{setting}".upper().replace("-", "_")


def resend_settings(
    destination: ActivatorDescriptor, stored: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The sender's settings for a resend: what the dead letter kept plus each secret from its variable."""
    environ = os.environ if environ is None else environ
    settings = dict(stored)
    properties = destination.settings_schema.get("properties", {})
    for name in properties if isinstance(properties, Mapping) else {}:
        variable = secret_env_var(destination.name, str(name))
        if is_secret_setting(destination, str(name)) and variable in environ:
            settings[str(name)] = environ[variable]
    return settings


class ActivationResender:
    """The reprocess handler of ``activation_failed`` (a ``plugins.dlq.reprocess.BatchHandler``)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        dlq: ObjectStore,
        destinations: Mapping[str, ActivatorDescriptor],
        *,
        tombstones: Callable[[str], Any] | None = None,
        settings: DeliverySettings | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.connect = connect
        self.dlq = dlq
        self.destinations = destinations
        self.tombstones = tombstones
        self.settings = settings
        self.environ = environ

    def __call__(self, source: str, entries: list[dict[str, Any]], dry_run: bool) -> BatchOutcome:
        tenant = parse_batch_key(source).tenant
        groups: dict[tuple[str, str, str, int, bytes], list[dict[str, Any]]] = defaultdict(list)
        for entry in entries:
            context = entry.get("context") or {}
            key = (
                str(context.get("campaign")),
                str(context.get("destination") or entry.get("provider")),
                str(context.get("action") or "add"),
                int(context.get("refresh_id") or 0),
                orjson.dumps(context.get("settings") or {}, option=orjson.OPT_SORT_KEYS),
            )
            groups[key].append(entry)
        missing = sorted({name for _c, name, *_rest in groups if name not in self.destinations})
        if missing:
            return BatchOutcome(
                source,
                "failed",
                records=len(entries),
                message=f"no activation destination '{missing[0]}' is installed; install its package and run again",
            )
        tombstones = self.tombstones(tenant) if self.tombstones is not None else ()
        answered = failed = would_send = 0
        outputs: list[dict[str, Any]] = []
        with self.connect() as conn:
            for (campaign, name, action, refresh_id, stored), members in groups.items():
                destination = self.destinations[name]
                sender_settings = resend_settings(destination, orjson.loads(stored), self.environ)
                sender = destination.load_sender()(sender_settings)
                try:
                    report = deliver(
                        conn,
                        tenant,
                        campaign=campaign,
                        destination=destination,
                        sender=sender,
                        refresh_id=refresh_id,
                        action="remove" if action == "remove" else "add",
                        deliveries=[delivery_from_record(entry["record"]) for entry in members],
                        dry_run=dry_run,
                        settings=self.settings,
                        tombstones=tombstones,
                        dlq=self.dlq,
                        sender_settings=sender_settings,
                        resend=True,
                    )
                finally:
                    sender.close()
                failed += report.failed + report.unconfirmed
                answered += len(members) - report.failed - report.unconfirmed
                would_send += report.would_send
                outputs += [{"zone": "dlq", "key": key, "records": None} for key in report.dead_letters]
        if dry_run:
            return BatchOutcome(
                source, "dry_run", records=len(entries), passed=answered, message=f"would send {would_send} again"
            )
        return BatchOutcome(
            source,
            "reprocessed",
            records=len(entries),
            passed=answered,
            failed=failed,
            outputs=outputs,
            message=f"sent again through the destination; {failed} failed again (back in the DLQ)" if failed else "",
        )
