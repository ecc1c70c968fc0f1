"""A real activation sender: appends each delivery as one JSON line, rejecting members without an email."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from plugins.descriptors import Delivery, MemberOutcome, MemberResult


class JsonlSender:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, action: str, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        results = []
        with self.path.open("a") as out:
            for delivery in deliveries:
                if not delivery.columns.get("email"):
                    results.append(MemberResult(delivery.member_id, MemberOutcome.REJECTED, "no email"))
                    continue
                out.write(json.dumps({"action": action, "key": delivery.idempotency_key, **delivery.columns}) + "\n")
                results.append(MemberResult(delivery.member_id, MemberOutcome.ACCEPTED))
        return results

    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._write("add", deliveries)

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        return self._write("remove", deliveries)

    def close(self) -> None:
        """Nothing held open: each call appends and closes the file."""
