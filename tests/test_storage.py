"""The object store behaves the same on a local folder and on S3 (each test runs on both via ``store``)."""

from __future__ import annotations

import gzip
import sys
import threading
from pathlib import Path

import pytest

from plugins.core.errors import ConfigError, ObjectNotFoundError
from plugins.core.storage import ObjectStore


def test_written_bytes_read_back_identically(store: ObjectStore) -> None:
    payload = gzip.compress(b'{"id": 1}\n')
    store.write_bytes("acme/stripe/a.ndjson.gz", payload)
    assert store.read_bytes("acme/stripe/a.ndjson.gz") == payload  # .gz is not decompressed behind our back


def test_write_replaces_an_existing_object(store: ObjectStore) -> None:
    store.write_bytes("k.json", b"old")
    store.write_bytes("k.json", b"new")
    assert store.read_bytes("k.json") == b"new"


def test_list_is_recursive_sorted_and_relative_to_the_root(store: ObjectStore) -> None:
    for key in ("t/p/year=2026/b.gz", "t/p/year=2025/a.gz", "t/q/c.gz", "other/d.gz"):
        store.write_bytes(key, b"x")
    assert [info.key for info in store.list("t")] == ["t/p/year=2025/a.gz", "t/p/year=2026/b.gz", "t/q/c.gz"]
    assert [info.size for info in store.list("t/q")] == [1]


def test_listing_a_missing_prefix_is_empty(store: ObjectStore) -> None:
    assert store.list("nothing/here") == []


def test_reading_a_missing_object_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="no object at"):
        store.read_bytes("missing.json")


def test_an_s3_object_deleted_between_opening_and_reading_is_not_found(s3_url: str) -> None:
    """Another process deletes the object after pyarrow's HEAD and before its GET (a journal that its run retires while
    a second run reads it): the GET fails with a generic error, which must still read as not found. (A local file
    deleted while open is still read whole.)"""
    store = ObjectStore(s3_url)
    store.write_bytes("journal.json", b"{}" * 100)
    filesystem = store.fs
    opened = filesystem.open_input_stream

    class DeletingFileSystem:
        def __getattr__(self, name: str) -> object:
            return getattr(filesystem, name)

        def open_input_stream(self, path: str, **options: object) -> object:
            stream = opened(path, **options)
            filesystem.delete_file(path)
            return stream

    store.fs = DeletingFileSystem()  # type: ignore[assignment]
    with pytest.raises(ObjectNotFoundError, match=r"journal\.json"):
        store.read_bytes("journal.json")


def test_put_if_absent_creates_once(store: ObjectStore) -> None:
    assert store.put_if_absent("subjects/v1.json", b"first") is True
    assert store.put_if_absent("subjects/v1.json", b"second") is False
    assert store.read_bytes("subjects/v1.json") == b"first"


def test_put_if_absent_has_one_winner_under_concurrency(store: ObjectStore) -> None:
    # Threads switched as often as the interpreter can: a check and a write that are not one step interleave (on S3
    # that is the server's to guarantee, which the tests' moto server does: tests/conftest.py).
    writers, keys = 8, 60
    results: dict[int, list[bool]] = {key: [] for key in range(keys)}
    lock = threading.Lock()

    def attempt(n: int, key: int, start: threading.Barrier) -> None:
        start.wait()
        won = store.put_if_absent(f"race/{key}.json", f"writer {n}".encode())
        with lock:
            results[key].append(won)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for key in range(keys):
            start = threading.Barrier(writers)
            threads = [threading.Thread(target=attempt, args=(n, key, start)) for n in range(writers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert {key: won.count(True) for key, won in results.items() if won.count(True) != 1} == {}
    assert store.read_bytes("race/0.json").startswith(b"writer ")


def test_move_and_delete(store: ObjectStore) -> None:
    store.write_bytes("dlq/a.gz", b"letter")
    store.move("dlq/a.gz", "retired/a.gz")
    assert not store.exists("dlq/a.gz")
    assert store.read_bytes("retired/a.gz") == b"letter"
    store.delete("retired/a.gz")
    store.delete("retired/a.gz")  # deleting twice is fine
    assert store.list() == []


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    store.write_bytes("a/b.gz", b"data")
    store.put_if_absent("a/c.gz", b"data")
    store.put_if_absent("a/c.gz", b"again")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.gz", "c.gz"]


def test_file_urls_and_plain_paths_name_the_same_folder(tmp_path: Path) -> None:
    ObjectStore(f"file://{tmp_path}").write_bytes("x.txt", b"1")
    assert ObjectStore(str(tmp_path)).read_bytes("x.txt") == b"1"
    assert ObjectStore(str(tmp_path)).url_for("x.txt") == str(tmp_path / "x.txt")


def test_s3_urls_point_at_the_bucket_and_prefix(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    store.write_bytes("a/b.txt", b"1")
    assert store.url_for("a/b.txt") == f"{s3_url}/a/b.txt"


def test_explicit_endpoint_setting_is_used(s3_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store = ObjectStore(s3_url, s3_endpoint_url=s3_endpoint)
    store.write_bytes("x", b"1")
    assert store.read_bytes("x") == b"1"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "setting 'raw_url': is empty"),
        ("s3://", "names no bucket"),
        ("gs://bucket/x", "unsupported scheme 'gs://'"),
    ],
)
def test_bad_urls_fail_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as excinfo:
        ObjectStore(url, setting="raw_url")
    assert excinfo.value.setting == "raw_url"


def test_bad_endpoint_fails_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="s3_endpoint_url"):
        ObjectStore("s3://bucket/x", s3_endpoint_url="localhost")
