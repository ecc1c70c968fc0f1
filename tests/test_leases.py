"""Leases on DLQ batches: one live owner, takeover only when the owner is gone, a stalled owner stops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from plugins.core.leases import Lease, LeaseBusy, LeaseLostError, LeaseManager, LeaseOwner, describe_moment
from plugins.core.serialization import dumps
from plugins.core.storage import ObjectStore

START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _manager(store: ObjectStore, run_id: str, clock: Clock) -> LeaseManager:
    return LeaseManager(store, "_lease/test", run_id=run_id, ttl=timedelta(seconds=60), clock=clock)


def _held(result: Lease | LeaseBusy) -> Lease:
    assert isinstance(result, Lease), result
    return result


def test_a_live_lease_is_not_taken_and_its_holder_is_named(store: ObjectStore) -> None:
    clock = Clock()
    first = _held(_manager(store, "run_a", clock).acquire("batch"))

    busy = _manager(store, "run_b", clock).acquire("batch")

    assert isinstance(busy, LeaseBusy)
    text = busy.describe(clock.now)
    assert "run run_a" in text
    assert "expires in 60 s" in text
    first.release()
    assert isinstance(_manager(store, "run_b", clock).acquire("batch"), Lease)  # released: free at once


def test_an_expired_lease_of_another_host_is_taken_over_and_its_stalled_holder_stops(store: ObjectStore) -> None:
    clock = Clock()
    stalled = _held(_manager(store, "run_a", clock).acquire("batch"))
    other_host = LeaseOwner("elsewhere", 1, "run_a", START, START + timedelta(seconds=60))
    newest = f"{stalled.folder}/{stalled.generation:06d}.json"
    store.write_bytes(newest, dumps(other_host.as_dict()))  # the holder runs on another host: only expiry counts

    clock.now = START + timedelta(seconds=59)
    assert isinstance(_manager(store, "run_b", clock).acquire("batch"), LeaseBusy)
    clock.now = START + timedelta(seconds=61)
    successor = _held(_manager(store, "run_b", clock).acquire("batch"))

    assert successor.generation == stalled.generation + 1
    with pytest.raises(LeaseLostError, match="taken over"):
        stalled.ensure_held()
    successor.ensure_held()  # the new holder renews without trouble


def test_a_heartbeat_keeps_the_lease_past_its_first_ttl(store: ObjectStore) -> None:
    clock = Clock()
    lease = _held(_manager(store, "run_a", clock).acquire("batch"))
    clock.now = START + timedelta(seconds=50)
    lease.ensure_held()
    clock.now = START + timedelta(seconds=100)
    assert isinstance(_manager(store, "run_b", clock).acquire("batch"), LeaseBusy)


def test_lease_objects_are_created_once_and_never_rewritten(store: ObjectStore) -> None:
    clock = Clock()
    lease = _held(_manager(store, "run_a", clock).acquire("batch"))
    seen: dict[str, bytes] = {}
    for _ in range(4):
        lease.ensure_held()
        for info in store.list(lease.folder):
            data = store.read_bytes(info.key)
            assert seen.setdefault(info.key, data) == data  # a reader can never catch one being rewritten
    lease.release()
    assert len(store.list(lease.folder)) == 2  # the released generation and the one before it, as the fence


def test_a_future_moment_is_never_a_negative_number_of_seconds() -> None:
    assert describe_moment(START + timedelta(seconds=300), START) == "in 300 s"
    assert describe_moment(START - timedelta(seconds=300), START) == "300 s ago"
