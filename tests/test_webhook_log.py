"""The durable webhook log: group commit, crash recovery, dedupe across restarts, consumers and compaction."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from plugins.connectors.testing import wait_until_async
from plugins.webhooks import fsync_helper
from plugins.webhooks.file_log import DEFAULT_SEGMENT_BYTES, SPARE_NAME, FileWebhookLog, LogLockedError, scan_records
from plugins.webhooks.group_commit import (
    GroupCommitWriter,
    LogClosedError,
    LogFailedError,
    LoopGroupCommit,
    LoopWriteResult,
    WriteResult,
)
from plugins.webhooks.log import BookmarkError, LogEntry, consumer_name, open_log
from plugins.webhooks.postgres_log import PostgresWebhookLog


def entry(event_id: str, stream: str = "events", tenant: str = "acme", provider: str = "stripe") -> LogEntry:
    return LogEntry(
        tenant, provider, stream, event_id, "customer.created", "2026-01-01T00:00:00+00:00", {"id": event_id}
    )


def ids(log: object, stream: str = "events", after: str | None = None, tenant: str = "acme") -> list[str]:
    return [stored.entry.event_id for stored in log.read(tenant, "stripe", stream, after)]  # type: ignore[attr-defined]


def test_concurrent_appends_share_group_commits_and_all_become_durable(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path)
    log.start_writer()
    groups: list[int] = []
    write_batch = log._write_batch_from_loop

    def counting(entries: list[LogEntry]) -> LoopWriteResult:
        groups.append(len(entries))
        return write_batch(entries)

    log._loop_writer._write_batch = counting  # type: ignore[union-attr]  # async appends commit on the loop

    async def send() -> list[list[bool]]:
        return await asyncio.gather(*(log.append([entry(f"evt_{index}")]) for index in range(500)))

    results = asyncio.run(send())
    log.close()
    assert all(result == [True] for result in results)
    assert sum(groups) == 500
    assert len(groups) < 500  # Several requests shared one write and fsync.
    assert sorted(ids(FileWebhookLog(tmp_path))) == sorted(f"evt_{index}" for index in range(500))


def test_duplicates_are_dropped_within_a_group_and_after_a_restart(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path)
    log.start_writer()
    assert log.append_sync([entry("a"), entry("a"), entry("b")]) == [True, False, True]
    log.close()
    reopened = FileWebhookLog(tmp_path)
    reopened.start_writer()
    assert reopened.append_sync([entry("a"), entry("c"), entry("a", tenant="beta")]) == [False, True, True]
    reopened.close()
    assert ids(reopened) == ["a", "b", "c"]


def test_a_torn_tail_from_a_crash_is_zeroed_and_appending_continues(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path)
    log.start_writer()
    log.append_sync([entry("a"), entry("b")])
    log.close()
    [segment] = (tmp_path / "segments").glob("*.seg")
    *_, (_, records_end, _) = scan_records(segment.read_bytes())
    with segment.open("r+b") as handle:  # A group cut short by a crash, written over the preallocated zeros.
        handle.seek(records_end)
        handle.write(b"\x03\x00\x00\x00\x00\x00\x00\x00\xff\x01\x00\x00partial" + b"x" * 300)
    assert ids(log) == ["a", "b"]  # Readers stop at the torn record.
    reopened = FileWebhookLog(tmp_path)
    reopened.start_writer()
    data = segment.read_bytes()
    assert data[records_end:] == bytes(len(data) - records_end)  # The torn bytes are zeros again...
    assert len(data) == DEFAULT_SEGMENT_BYTES  # ...and the segment keeps its preallocated size.
    reopened.append_sync([entry("c")])  # Shorter than the torn group: nothing of it may show after "c".
    reopened.close()
    positions = [stored.position for stored in reopened.read("acme", "stripe", "events")]
    assert ids(reopened) == ["a", "b", "c"]
    assert positions == sorted(positions)
    assert len(set(positions)) == 3


def test_segments_are_preallocated_with_zeros_and_cut_to_their_records_when_sealed(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path, segment_bytes=4096)
    log.start_writer()
    log.append_sync([entry("a")])
    [active] = (tmp_path / "segments").glob("*.seg")
    assert active.stat().st_size == 4096  # Records overwrite zeros written ahead of time.
    while len(list((tmp_path / "segments").glob("*.seg"))) < 2:
        log.append_sync([entry(f"fill-{uuid.uuid4().hex}")])
    log.close()
    sealed, newest = sorted((tmp_path / "segments").glob("*.seg"))
    *_, (_, records_end, _) = scan_records(sealed.read_bytes())
    assert sealed.stat().st_size == records_end >= 4096  # Sealed: exactly its records.
    assert newest.stat().st_size == 4096
    assert (tmp_path / "segments" / SPARE_NAME).stat().st_size == 4096  # The next one is ready.
    assert ids(log)[0] == "a"


def test_reading_after_a_position_returns_only_later_entries_of_that_stream(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path, segment_bytes=200)  # Tiny segments: reads cross segment boundaries.
    log.start_writer()
    for index in range(10):  # One group commit each; a segment rolls after the group that fills it.
        log.append_sync([entry(f"e{index}", stream="orders" if index % 2 else "events")])
    log.close()
    assert len(list((tmp_path / "segments").glob("*.seg"))) > 2
    events = list(log.read("acme", "stripe", "events"))
    assert [stored.entry.event_id for stored in events] == ["e0", "e2", "e4", "e6", "e8"]
    assert ids(log, "events", after=events[2].position) == ["e6", "e8"]
    assert ids(log, "events", tenant="beta") == []


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    first = FileWebhookLog(tmp_path)
    first.start_writer()
    with pytest.raises(LogLockedError, match="postgresql"):
        FileWebhookLog(tmp_path).start_writer()
    first.close()


def test_compaction_removes_only_segments_every_consumer_has_committed_past(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path, segment_bytes=150)
    log.start_writer()
    for index in range(10):
        log.append_sync([entry(f"e{index}", stream="orders" if index >= 6 else "events")])
    log.close()
    before = len(list((tmp_path / "segments").glob("*.seg")))
    assert log.compact().removed_units == 0  # No consumer has committed anything yet.
    events = list(log.read("acme", "stripe", "events"))
    log.commit(consumer_name("acme", "stripe", "events"), events[-1].position)
    result = log.compact()
    # Segments holding only events go; those with orders wait for the orders consumer.
    assert result.removed_entries == 6  # e0..e5, two per segment.
    assert ids(log, "orders") == ["e6", "e7", "e8", "e9"]
    orders = list(log.read("acme", "stripe", "orders"))
    log.commit(consumer_name("acme", "stripe", "orders"), orders[-1].position)
    log.compact()
    remaining = list((tmp_path / "segments").glob("*.seg"))
    assert len(remaining) == 1 < before  # The newest segment always stays: it is the one being appended to.
    assert log.consumers() == {
        "acme/stripe/events": events[-1].position,
        "acme/stripe/orders": orders[-1].position,
    }


def test_log_url_chooses_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_log(f"file://{tmp_path}"), FileWebhookLog)
    assert isinstance(open_log(str(tmp_path)), FileWebhookLog)
    assert isinstance(open_log("postgresql://u@localhost/db"), PostgresWebhookLog)
    with pytest.raises(ValueError, match="log_url"):
        open_log("s3://bucket/log")


@pytest.fixture
def pg_log(postgres_url: str) -> PostgresWebhookLog:
    log = PostgresWebhookLog(postgres_url)
    log.start_writer()
    yield log
    log.close()


def test_postgres_log_stores_dedupes_and_reads_in_order(pg_log: PostgresWebhookLog) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    assert pg_log.append_sync([entry("a", tenant=tenant), entry("a", tenant=tenant), entry("b", tenant=tenant)]) == [
        True,
        False,
        True,
    ]

    async def concurrent() -> list[list[bool]]:
        return await asyncio.gather(*(pg_log.append([entry(f"c{index}", tenant=tenant)]) for index in range(50)))

    assert all(result == [True] for result in asyncio.run(concurrent()))
    assert pg_log.append_sync([entry("b", tenant=tenant)]) == [False]
    stored = list(pg_log.read(tenant, "stripe", "events"))
    assert [item.entry.event_id for item in stored[:2]] == ["a", "b"]
    assert len(stored) == 52
    assert [item.position for item in stored] == sorted(item.position for item in stored)
    assert ids(pg_log, after=stored[1].position, tenant=tenant) == [item.entry.event_id for item in stored[2:]]


def test_postgres_log_is_shared_by_two_receivers(postgres_url: str) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    first, second = PostgresWebhookLog(postgres_url), PostgresWebhookLog(postgres_url)
    first.start_writer()
    second.start_writer()
    assert first.append_sync([entry("x", tenant=tenant)]) == [True]
    assert second.append_sync([entry("x", tenant=tenant), entry("y", tenant=tenant)]) == [False, True]
    first.close()
    second.close()
    assert ids(first, tenant=tenant) == ["x", "y"]


def test_postgres_compaction_deletes_rows_up_to_the_committed_position(pg_log: PostgresWebhookLog) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    pg_log.append_sync([entry(f"e{index}", tenant=tenant) for index in range(5)])
    stored = list(pg_log.read(tenant, "stripe", "events"))
    pg_log.commit(consumer_name(tenant, "stripe", "events"), stored[2].position)
    result = pg_log.compact()
    assert result.removed_entries == 3
    assert ids(pg_log, tenant=tenant) == ["e3", "e4"]
    assert pg_log.consumers()[consumer_name(tenant, "stripe", "events")] == stored[2].position


def test_cdp_webhooks_compact_reports_what_it_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from plugins.cli.app import main

    log = FileWebhookLog(tmp_path, segment_bytes=100)
    log.start_writer()
    for index in range(3):
        log.append_sync([entry(f"e{index}")])
    log.close()
    log.commit(consumer_name("acme", "stripe", "events"), list(log.read("acme", "stripe", "events"))[-1].position)
    assert main(["webhooks", "compact", "--log-url", f"file://{tmp_path}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["removed_units"], report["removed_entries"]) == (3, 3)


def test_a_failed_sync_fails_the_writer_until_restart() -> None:
    syncs = iter([OSError(5, "Input/output error")])

    def write_batch(items: list[str]) -> WriteResult:
        def sync() -> None:
            error = next(syncs, None)
            if error is not None:
                raise error

        return [True] * len(items), sync

    writer: GroupCommitWriter[str] = GroupCommitWriter(write_batch)
    with pytest.raises(OSError, match="Input/output"):
        writer.submit_sync(["a"], timeout=5)
    with pytest.raises(LogFailedError, match="restart"):  # Even though the next sync would succeed.
        writer.submit_sync(["b"], timeout=5)
    writer.close()


def test_a_sync_the_disk_refuses_fails_the_loop_log_until_restart() -> None:
    """fdatasync of /dev/null fails (EINVAL), as a failing disk would: nothing is acknowledged from then on."""
    committer: LoopGroupCommit[str] = LoopGroupCommit(lambda items: ([True] * len(items), "/dev/null"))

    async def append_twice() -> tuple[BaseException, BaseException]:
        first = await asyncio.gather(committer.submit(["a"]), return_exceptions=True)
        second = await asyncio.gather(committer.submit(["b"]), return_exceptions=True)
        return first[0], second[0]  # type: ignore[return-value]

    first, second = asyncio.run(append_twice())
    committer.close()
    assert isinstance(first, LogFailedError)
    assert "Invalid argument" in str(first)
    assert isinstance(second, LogFailedError)
    assert "restart" in str(second)
    assert committer.failed is not None


def test_several_refused_syncs_in_flight_all_fail_cleanly() -> None:
    committer: LoopGroupCommit[str] = LoopGroupCommit(lambda items: ([True] * len(items), "/dev/null"))
    loop_errors: list[dict[str, object]] = []

    async def three_groups() -> list[object]:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
        appends = []
        for name in ("a", "b", "c"):  # One loop iteration each: three groups, three sync requests in flight.
            appends.append(asyncio.ensure_future(committer.submit([name])))
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        # The first answer failed all three; the other two still arrive, and stay unread once the log has failed
        # (or, were they mishandled, end up in loop_errors).
        await wait_until_async(
            lambda: loop_errors or committer._answers.count(b"\n") == 2, 10, "the two late sync answers"
        )
        return outcomes

    outcomes = asyncio.run(three_groups())
    committer.close()
    assert all(isinstance(outcome, LogFailedError) for outcome in outcomes)
    assert loop_errors == []


def test_a_dead_fsync_helper_fails_waiting_appends_instead_of_hanging(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path)
    log.start_writer()

    async def scenario() -> list[object]:
        assert await log.append([entry("a")]) == [True]
        log._loop_writer._helper.kill()  # type: ignore[union-attr]
        return await asyncio.gather(
            *(log.append([entry(f"after-{index}")]) for index in range(3)), return_exceptions=True
        )

    outcomes = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert all(isinstance(outcome, LogFailedError) for outcome in outcomes)
    assert log.failed is not None
    log.close()
    assert ids(FileWebhookLog(tmp_path))[0] == "a"  # What was acknowledged is there.


def test_closing_answers_appends_still_waiting_with_an_error(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path)
    log.start_writer()

    async def scenario() -> object:
        pending = asyncio.ensure_future(log.append([entry("a")]))
        await asyncio.sleep(0)  # Submitted, not yet durable.
        log.close()
        return (await asyncio.gather(pending, return_exceptions=True))[0]

    outcome = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert isinstance(outcome, LogClosedError)


def test_the_fsync_helper_answers_every_queued_request_with_one_sync_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment = tmp_path / "segment.seg"
    segment.write_bytes(b"x")
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    queued = [segment, segment, segment, tmp_path / "compacted.seg", Path("/dev/null")]
    os.write(requests_write, b"".join(str(path).encode() + b"\n" for path in queued))  # All queued at once.
    os.close(requests_write)  # The receiver is gone after these: the helper must return.
    fsync_helper.serve(requests_read, answers_write)
    os.close(answers_write)
    with os.fdopen(answers_read, "rb") as answers:
        lines = answers.read().splitlines()
    assert lines[:4] == [b"ok"] * 4  # A compacted (already sealed and synced) segment needs nothing.
    assert lines[4].startswith(b"error fdatasync of /dev/null failed")
    assert len(synced) == 2  # One for the three requests of the segment, one refused for /dev/null.


def test_the_fsync_helper_starts_a_sync_while_an_earlier_one_runs_and_answers_in_request_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment = tmp_path / "segment.seg"
    segment.write_bytes(b"x")
    first_started = threading.Event()
    second_started = threading.Event()
    real_fdatasync = os.fdatasync

    def first_waits_for_the_second(fd: int) -> None:
        if not first_started.is_set():
            first_started.set()
            second_started.wait(5)  # Ends only after the second began (or after 5 s when syncs run one at a time).
            real_fdatasync(fd)
            return
        second_started.set()
        raise OSError(errno.EIO, "the second sync fails, and first")

    monkeypatch.setattr(os, "fdatasync", first_waits_for_the_second)
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    helper = threading.Thread(target=fsync_helper.serve, args=(requests_read, answers_write))
    helper.start()
    os.write(requests_write, str(segment).encode() + b"\n")
    assert first_started.wait(5)
    os.write(requests_write, str(segment).encode() + b"\n")  # Arrives while the first sync runs.
    overlapped = second_started.wait(5)
    os.close(requests_write)
    helper.join(15)
    os.close(answers_write)
    with os.fdopen(answers_read, "rb") as answers:
        lines = answers.read().splitlines()
    assert overlapped  # The second sync began while the first was still running.
    assert lines[0] == b"ok"  # In the order of the requests, though the second sync ended first.
    assert lines[1].startswith(b"error fdatasync of")
    assert b"the second sync fails" in lines[1]


def test_a_bookmark_from_a_recreated_log_or_past_its_end_is_refused_with_a_way_to_reset(tmp_path: Path) -> None:
    old = FileWebhookLog(tmp_path / "old")
    old.start_writer()
    old.append_sync([entry(f"e{index}") for index in range(5)])
    old.close()
    bookmark = list(old.read("acme", "stripe", "events"))[-1].position
    old.check_bookmark(bookmark)  # Its own log: fine.
    new = FileWebhookLog(tmp_path / "new")  # The log recreated (another folder, or the old one wiped).
    new.start_writer()
    new.append_sync([entry("n1")])
    new.close()
    with pytest.raises(BookmarkError, match=r"another webhook log.*reset the extractor's state"):
        new.check_bookmark(bookmark)
    legacy = bookmark.rpartition(":")[2]  # A bookmark written before logs had an id: past this log's end.
    with pytest.raises(BookmarkError, match="past the end of the webhook log"):
        new.check_bookmark(legacy)
    new.check_bookmark(None)
    new.check_bookmark(list(new.read("acme", "stripe", "events"))[-1].position)


def test_a_compacted_log_still_accepts_bookmarks_up_to_its_last_position(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path, segment_bytes=150)  # One event per segment.
    log.start_writer()
    for index in range(3):
        log.append_sync([entry(f"e{index}")])
    log.close()
    last = list(log.read("acme", "stripe", "events"))[-1].position
    log.commit(consumer_name("acme", "stripe", "events"), last)
    assert log.compact().removed_entries >= 2
    log.check_bookmark(last)


def test_postgres_bookmark_from_another_log_or_past_the_end_is_refused(pg_log: PostgresWebhookLog) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    pg_log.append_sync([entry("a", tenant=tenant)])
    [stored] = list(pg_log.read(tenant, "stripe", "events"))
    pg_log.check_bookmark(stored.position)
    _, txid, seq = stored.position.split(":")
    with pytest.raises(BookmarkError, match="another webhook log"):
        pg_log.check_bookmark(f"wrecreated000000:{txid}:{seq}")
    with pytest.raises(BookmarkError, match="past the end"):
        pg_log.check_bookmark(f"{int(txid) + 10**9:020d}:{int(seq) + 10**9:020d}")


def test_compact_and_consumers_of_a_log_that_does_not_exist_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugins.cli.app import main

    for command in ("compact", "consumers"):
        assert main(["webhooks", command, "--log-url", str(tmp_path / "nonexistent")]) == 1
        err = capsys.readouterr().err.strip()
        assert "no webhook log at" in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "nonexistent").exists()


def test_a_corrupt_consumers_file_fails_in_one_line_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugins.cli.app import main

    (tmp_path / "consumers.json").write_text('{"acme/stripe/events": "0000')
    assert main(["webhooks", "consumers", "--log-url", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "consumers.json is corrupt" in err
    assert "delete it" in err
    assert len(err.splitlines()) == 1


def test_remembering_event_ids_past_the_dedupe_capacity_costs_no_more_per_event(tmp_path: Path) -> None:
    """A plain dict dropped its oldest key by skipping the slots of all keys deleted before it: past the capacity each
    new event cost more, up to hundreds of µs at the default 200k (about 100x the cost within the capacity here).
    Compared within the test, not against a clock."""
    capacity = 50_000
    log = FileWebhookLog(tmp_path, dedupe_capacity=capacity)
    started = time.perf_counter()
    for index in range(capacity):
        log._remember(f"first_{index}")
    within = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(capacity):
        log._remember(f"second_{index}")
    past = time.perf_counter() - started
    assert past < 5 * within, f"{capacity} events past the capacity took {past:.2f} s, within it {within:.2f} s"


def test_the_log_forgets_the_oldest_event_ids_past_its_dedupe_capacity(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path, dedupe_capacity=3)
    log.start_writer()
    try:
        assert log.append_sync([entry(name) for name in "abcd"]) == [True] * 4
        assert log.append_sync([entry("d"), entry("a")]) == [False, True]  # "a" was the oldest, so forgotten.
    finally:
        log.close()


def test_remembering_event_ids_leaves_no_objects_for_the_garbage_collector(tmp_path: Path) -> None:
    """Under sustained load, keys the collector tracks piled up by the thousand between young collections, and each
    collection traversed them all (10-50 ms pauses every 50k events)."""
    log = FileWebhookLog(tmp_path, segment_bytes=4 * 1024 * 1024)
    log.start_writer()
    entries = [entry(f"evt_{index}") for index in range(5000)]
    log.append_sync(entries[:10])  # The writer's own first-use objects, before counting.
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        assert log.append_sync(entries[10:]) == [True] * 4990
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
        log.close()
    assert grown < 500  # One tracked key per event was 4990.


def test_consumers_marks_a_position_the_log_cannot_have_written_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recreated log leaves consumers pointing past its end; listing them must say so, not print them as fine."""
    from plugins.cli.app import main

    log = FileWebhookLog(tmp_path)
    log.start_writer()
    log.append_sync([entry("e0"), entry("e1")])
    stored = list(log.read("acme", "stripe", "events"))
    log.commit(consumer_name("acme", "stripe", "events"), stored[-1].position)
    assert main(["webhooks", "consumers", "--log-url", str(tmp_path)]) == 0
    capsys.readouterr()
    log_id, _, sequence = stored[-1].position.rpartition(":")
    stale = f"{log_id}:{int(sequence) + 1000}"
    log.commit(consumer_name("acme", "stripe", "orders"), stale)
    log.close()

    assert main(["webhooks", "consumers", "--log-url", str(tmp_path), "--json"]) == 1
    listed = {row["consumer"]: row for row in json.loads(capsys.readouterr().out)["consumers"]}
    assert listed["acme/stripe/events"]["valid"] is True
    assert listed["acme/stripe/orders"]["valid"] is False
    assert "past the end" in listed["acme/stripe/orders"]["problem"]
    assert main(["webhooks", "consumers", "--log-url", str(tmp_path)]) == 1
    assert "invalid: bookmark" in capsys.readouterr().out
