"""Leases: at most one live owner of a named resource (a DLQ source batch) across processes and hosts.

A lease is a chain of generation objects ``{prefix}/{name hash}/{generation:06d}.json`` in an object store. Every
generation is created with ``put_if_absent`` (``If-None-Match: *`` on S3, ``link()`` locally) and never changed
afterwards, so exactly one process wins each generation and no reader ever sees an object being rewritten. The newest
generation says who holds the lease: its owner (host, pid, run id, when it started and when the lease expires), or
that it was released.

- Taking the lease: create generation n+1 when generation n is released or its owner is gone (the lease expired, or
  the owner ran on this host and its pid is dead); a live owner's lease is left alone.
- Renewing it (the heartbeat, before each step that changes anything): the holder creates generation n+1 with a new
  expiry. If that name is taken, someone took the lease over after it expired (the holder stalled past its TTL), and
  the holder stops with LeaseLostError instead of racing its successor.
- Releasing it: the holder creates generation n+1 marked released, so the next taker need not wait for the expiry.

Generation numbers are never reused: whoever creates n+1 deletes the generations before n and keeps n, so a process
that saw an older generation cannot create a name that was already taken; and ``acquire`` gives up when, after
creating its generation, it finds a newer one.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from plugins.core.errors import CdpError, ObjectNotFoundError
from plugins.core.serialization import dumps, loads
from plugins.core.storage import ObjectStore

DEFAULT_LEASE_TTL = timedelta(minutes=10)
_GENERATION_DIGITS = 6


class LeaseLostError(CdpError):
    """The lease this process held was taken over (it stalled past its TTL); it must stop changing things."""


def describe_moment(moment: datetime, now: datetime) -> str:
    """``"in 300 s"`` or ``"300 s ago"``: never a negative count of seconds."""
    seconds = int((moment - now).total_seconds())
    return f"in {seconds} s" if seconds >= 0 else f"{-seconds} s ago"


def pid_is_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (one we may not signal still counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds (or held) one generation of a lease."""

    host: str
    pid: int
    run_id: str
    started_at: datetime
    expires_at: datetime
    released: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "released": self.released,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeaseOwner:
        return cls(
            host=str(data["host"]),
            pid=int(data["pid"]),
            run_id=str(data["run_id"]),
            started_at=datetime.fromisoformat(data["started_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            released=bool(data.get("released", False)),
        )

    def gone(self, now: datetime) -> bool:
        """Released, expired, or (on this host) its process is dead."""
        if self.released or self.expires_at <= now:
            return True
        return self.host == socket.gethostname() and not pid_is_alive(self.pid)

    def describe(self, now: datetime) -> str:
        return (
            f"run {self.run_id} (host {self.host}, pid {self.pid}, started {describe_moment(self.started_at, now)}, "
            f"lease expires {describe_moment(self.expires_at, now)})"
        )


@dataclass
class Lease:
    """A held lease: the newest generation, which this process created."""

    store: ObjectStore
    name: str
    folder: str
    generation: int
    owner: LeaseOwner
    ttl: timedelta
    clock: Callable[[], datetime]

    def ensure_held(self) -> None:
        """Renew the lease (a new generation with a new expiry); raises LeaseLostError if it was taken over."""
        renewed = replace(self.owner, expires_at=self.clock() + self.ttl)
        if not _claim(self.store, self.folder, self.generation + 1, renewed):
            raise LeaseLostError(
                f"the lease on {self.name} was taken over while this run held it (it stalled past its TTL of "
                f"{int(self.ttl.total_seconds())} s); stopping before changing anything else"
            )
        self.generation += 1
        self.owner = renewed

    def release(self) -> None:
        """Hand the lease back, so the next taker need not wait for it to expire (a no-op if it was taken over)."""
        released = replace(self.owner, expires_at=self.clock(), released=True)
        if _claim(self.store, self.folder, self.generation + 1, released):
            self.generation += 1
            self.owner = released


@dataclass(frozen=True)
class LeaseBusy:
    """Why a lease could not be taken: its live holder."""

    name: str
    holder: LeaseOwner | None

    def describe(self, now: datetime) -> str:
        if self.holder is None:
            return f"{self.name} is being taken by another run at this moment"
        return f"{self.name} is held by {self.holder.describe(now)}"


def _generation_of(key: str) -> int | None:
    stem = key.rsplit("/", 1)[-1].removesuffix(".json")
    return int(stem) if stem.isdigit() else None


def _generation_key(folder: str, generation: int) -> str:
    return f"{folder}/{generation:0{_GENERATION_DIGITS}d}.json"


def _newest_generation(store: ObjectStore, folder: str) -> tuple[int, str] | None:
    found = [(g, info.key) for info in store.iter_objects(folder) if (g := _generation_of(info.key)) is not None]
    return max(found) if found else None


def _claim(store: ObjectStore, folder: str, generation: int, owner: LeaseOwner) -> bool:
    """Create ``generation`` for ``owner``; False if that name is taken. Drops the generations before the previous
    one (the previous one stays: it is what stops a late creator of an old number)."""
    if not store.put_if_absent(_generation_key(folder, generation), dumps(owner.as_dict())):
        return False
    for info in store.iter_objects(folder):
        older = _generation_of(info.key)
        if older is not None and older < generation - 1:
            store.delete(info.key)
    return True


class LeaseManager:
    """Takes leases on names under ``prefix`` of ``store`` for one run."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        *,
        run_id: str,
        ttl: timedelta = DEFAULT_LEASE_TTL,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.run_id = run_id
        self.ttl = ttl
        self.clock = clock

    def folder(self, name: str) -> str:
        return f"{self.prefix}/{hashlib.sha256(name.encode()).hexdigest()[:32]}"

    def _read(self, key: str) -> LeaseOwner | None:
        try:
            return LeaseOwner.from_dict(loads(self.store.read_bytes(key)))
        except ObjectNotFoundError:
            return None

    def acquire(self, name: str) -> Lease | LeaseBusy:
        """Take the lease on ``name`` if nobody live holds it; otherwise say who does."""
        folder = self.folder(name)
        now = self.clock()
        newest = _newest_generation(self.store, folder)
        if newest is None:
            generation = 1
        else:
            holder = self._read(newest[1])
            if holder is None:  # Dropped since the listing: a newer generation exists, so someone holds it now.
                return LeaseBusy(name, None)
            if not holder.gone(now):
                return LeaseBusy(name, holder)
            generation = newest[0] + 1
        owner = LeaseOwner(socket.gethostname(), os.getpid(), self.run_id, now, now + self.ttl)
        if not _claim(self.store, folder, generation, owner):
            winner = self._read(_generation_key(folder, generation))
            return LeaseBusy(name, winner if winner is not None and not winner.gone(now) else None)
        after = _newest_generation(self.store, folder)
        if after is not None and after[0] > generation:  # We created a number already passed: someone holds it.
            self.store.delete(_generation_key(folder, generation))
            return LeaseBusy(name, self._read(after[1]))
        return Lease(self.store, name, folder, generation, owner, self.ttl, self.clock)
