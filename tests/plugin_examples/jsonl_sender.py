"""A real activation sender: appends each member as one JSON line, rejecting members without an email."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plugins.descriptors import MemberOutcome, MemberResult


class JsonlSender:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, action: str, members: Sequence[Mapping[str, Any]]) -> list[MemberResult]:
        results = []
        with self.path.open("a") as out:
            for member in members:
                if not member.get("email"):
                    results.append(MemberResult(str(member["customer_id"]), MemberOutcome.REJECTED, "no email"))
                    continue
                out.write(json.dumps({"action": action, **member}) + "\n")
                results.append(MemberResult(str(member["customer_id"]), MemberOutcome.ACCEPTED))
        return results

    def send(self, members: Sequence[Mapping[str, Any]]) -> list[MemberResult]:
        return self._write("add", members)

    def remove(self, members: Sequence[Mapping[str, Any]]) -> list[MemberResult]:
        return self._write("remove", members)
