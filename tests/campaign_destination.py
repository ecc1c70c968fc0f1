"""A content destination for the campaign tests: each delivery, with its variant and rendered content, appended as one
JSON line to the file the ``path`` setting names (the sender the campaign launch builds from its settings).

Registered by tests/test_campaigns.py into the process's plugin manager, as an entry point would register it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plugins import hookimpl
from plugins.descriptors import ActivatorDescriptor, ChannelLimits, Delivery, MemberOutcome, MemberResult

NAME = "campaign-jsonl"


class JsonlContentSender:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.path = Path(settings["path"])
        self.closed = False

    def _write(self, action: str, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        with self.path.open("a") as out:
            for delivery in deliveries:
                content = delivery.content
                out.write(
                    json.dumps(
                        {
                            "action": action,
                            "member_id": delivery.member_id,
                            "key": delivery.idempotency_key,
                            "variant": delivery.variant,
                            "email": delivery.columns.get("email"),
                            "subject": content.subject if content else None,
                            "text": content.text if content else None,
                            "html": content.html if content else None,
                        }
                    )
                    + "\n"
                )
        return [MemberResult(delivery.member_id, MemberOutcome.ACCEPTED) for delivery in deliveries]

    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._write("add", deliveries)

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._write("remove", deliveries)

    def close(self) -> None:
        self.closed = True


@hookimpl
def cdp_activators() -> list[ActivatorDescriptor]:
    return [
        ActivatorDescriptor(
            name=NAME,
            sender="tests.campaign_destination:JsonlContentSender",
            limits=ChannelLimits(max_batch_size=3, requests_per_second=1000.0),
            channel="email",
            content=True,
            description="Campaign deliveries with their content, appended to a JSON Lines file.",
            settings_schema={
                "type": "object",
                "properties": {"path": {"type": "string"}, "api_token": {"type": "string", "secret": True}},
                "required": ["path"],
            },
        )
    ]
