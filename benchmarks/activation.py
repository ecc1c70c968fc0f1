"""A 1M-member audience to the Facebook Custom Audiences sandbox: normalise + hash + batch rate against plain hashlib.

    .venv/bin/python benchmarks/activation.py                    # 1,000,000 members, the sandbox in its own process
    .venv/bin/python benchmarks/activation.py --members 100000   # a quick look

Members are a synthetic segment export (customer_id, email, phone, first and last name, city, region, postal code,
country; written as people write them: mixed case, spaces, "+" and punctuation; about 1,000 distinct first names,
20,000 last names, 500 cities, 30,000 postal codes per 1M, every email and phone distinct). In the same run, on the
same values, slice by slice in turns (a busy neighbour slows both alike):

- **floor**: plain ``hashlib.sha256(value.encode()).hexdigest()`` over every identifier the payload hashes, nothing
  else: the least any uploader has to do;
- **normalise + hash + batch**: ``activators.facebook.normalize.payload_rows`` per 10,000-row slice of the export
  (Meta's normalisation on Arrow columns; SHA-256 hex, once per distinct value of a column that repeats: names,
  places, countries; rows in schema order) and the request body it goes in (the
  ``payload`` JSON, as the sender builds it): our code, nothing sent;
- **sender path**: the same from ``Delivery`` objects through ``FacebookSender.add`` (the engine's path: the
  deliveries' columns to Arrow first), sent to the sandbox in upload sessions, 10,000 per request; the sandbox runs
  in its own process (it checks every value and counts; ``keep_members`` off so 1M members do not sit in its memory).
  The seconds in HTTP (the sandbox's work included) are measured at the transport, so the sender's own share shows.

The goal: normalise + hash + batch at least 0.5x the floor, so the API and not our code is the limit.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import time

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from activators.facebook.normalize import COLUMN_FOR_KEY, SCHEMA, UNHASHED_KEYS, payload_json, payload_rows
from activators.facebook.sandbox import DEFAULT_ACCESS_TOKEN, DEFAULT_AUDIENCE_ID, create_sandbox
from activators.facebook.sender import FacebookSender
from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from plugins.descriptors import Delivery

BATCH = 10_000
FIRST = ["Chloé", "Olúmìdé", "Mary Ann", "ZOË", "José", "Łukasz", "Aiko", "Sean"]
LAST = ["O'Brien", "Fernández", "Núñez-García", "Smith", "Nakamura", "Kowalski"]
CITIES = [
    ("New York", "NY", "10001-2345", "US"),
    ("São Paulo", "SP", "01310-100", "BR"),
    ("London", "", "SW1A 1AA", "GB"),
]


def letters(n: int) -> str:
    """``n`` written in base 26 with the letters a-z (names stay names once normalised)."""
    text = ""
    while True:
        n, digit = divmod(n, 26)
        text += chr(97 + digit)
        if not n:
            return text


def export(members: int) -> pa.Table:
    """A synthetic segment export of ``members`` rows."""
    ids = pc.cast(pa.array(range(members)), pa.string())
    pick = [i % len(CITIES) for i in range(members)]
    return pa.table(
        {
            "customer_id": pc.binary_join_element_wise("cus_", ids, ""),
            "email": pc.binary_join_element_wise(" Person.", ids, "@Example.COM ", ""),
            "phone": pc.binary_join_element_wise("+1 (415) ", pc.utf8_lpad(ids, 7, "0"), ""),
            "first_name": pa.array([FIRST[i % len(FIRST)] + letters(i % 125) for i in range(members)]),
            "last_name": pa.array([LAST[i % len(LAST)] + letters(i % 3333) for i in range(members)]),
            "city": pa.array([CITIES[c][0] + " " + letters(i % 167) for i, c in enumerate(pick)]),
            "region": pa.array([CITIES[c][1] for c in pick]),
            "postal_code": pa.array([f"{i % 30000:05d}-{i % 7:04d}" for i in range(members)]),
            "country": pa.array([CITIES[c][3] for c in pick]),
        }
    )


def floor_slice(columns: list[list[str | None]]) -> float:
    """Seconds for plain hashlib over every raw identifier of one slice that the payload hashes."""
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for column in columns:
        for value in column:
            if value:
                sha256(value.encode()).hexdigest()
    return time.perf_counter() - started


def ours_slice(table: pa.Table) -> float:
    """Seconds for our normalisation + hashing + request body of one slice, nothing sent."""
    started = time.perf_counter()
    rows, matchable = payload_rows(table)
    payload_json(pc.filter(rows, matchable))
    return time.perf_counter() - started


def floor_and_ours(table: pa.Table) -> tuple[float, float]:
    """Both, slice by slice in turns (a busy neighbour slows both alike): total seconds of each."""
    floor_s = ours_s = 0.0
    for offset in range(0, table.num_rows, BATCH):
        part = table.slice(offset, BATCH)
        columns = [part.column(COLUMN_FOR_KEY[key]).to_pylist() for key in SCHEMA if key not in UNHASHED_KEYS]
        floor_s += floor_slice(columns)
        ours_s += ours_slice(part)
    return floor_s, ours_s


def serve(port: int, ready: multiprocessing.synchronize.Event, stop: multiprocessing.synchronize.Event) -> None:
    options = SandboxOptions(credentials={"keep_members": "false"})
    with SandboxServer(create_sandbox(options), port=port):
        ready.set()
        stop.wait()


class TimedTransport(httpx.HTTPTransport):
    """Counts the seconds spent in HTTP (sending, the sandbox's work, the answer): the rest is the sender's own."""

    seconds = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            return super().handle_request(request)
        finally:
            self.seconds += time.perf_counter() - started


def sender_path(table: pa.Table, port: int) -> tuple[float, float, float]:
    """(seconds building the deliveries, seconds of FacebookSender.add over all batches and close incl. HTTP, seconds
    of HTTP in it)."""
    started = time.perf_counter()
    rows = table.to_pylist()
    deliveries = [Delivery(row["customer_id"], row, f"bench:{row['customer_id']}:a") for row in rows]
    built = time.perf_counter() - started
    settings = {
        "access_token": DEFAULT_ACCESS_TOKEN,
        "audience_id": DEFAULT_AUDIENCE_ID,
        "base_url": f"http://127.0.0.1:{port}",
        "estimated_num_total": len(deliveries),
    }
    transport = TimedTransport()
    sender = FacebookSender(settings, client=httpx.Client(transport=transport, timeout=120))
    started = time.perf_counter()
    for offset in range(0, len(deliveries), BATCH):
        sender.add(deliveries[offset : offset + BATCH])
    sender.close()
    return built, time.perf_counter() - started, transport.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--port", type=int, default=0, help="the sandbox's port (0: a free one)")
    args = parser.parse_args()

    table = export(args.members)
    hashes = sum(table.column(COLUMN_FOR_KEY[k]).null_count == 0 for k in SCHEMA if k not in UNHASHED_KEYS)
    floor_s, ours_s = floor_and_ours(table)

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", args.port))
        port = probe.getsockname()[1]
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(port, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the sandbox did not start")
        built_s, sent_s, http_s = sender_path(table, port)
    finally:
        stop.set()
        server.join(10)

    n = args.members
    print(f"{n:,} members, {hashes} hashed identifiers each ({n * hashes:,} SHA-256), batches of {BATCH:,}")
    print(f"floor: plain hashlib.sha256            {n / floor_s:>12,.0f} members/s  ({floor_s:6.2f} s)")
    print(
        f"normalise + hash + batch (Arrow)       {n / ours_s:>12,.0f} members/s  ({ours_s:6.2f} s)  "
        f"{floor_s / ours_s:.2f}x the floor"
    )
    own_s = sent_s - http_s
    print(
        f"sender path to the sandbox             {n / sent_s:>12,.0f} members/s  ({sent_s:6.2f} s, of which HTTP and "
        f"the sandbox {http_s:.2f} s; building the {n:,} Delivery objects, {built_s:.2f} s, not counted)"
    )
    print(
        f"  the sender's own code (Deliveries -> Arrow -> payload) {n / own_s:>10,.0f} members/s  ({own_s:6.2f} s)  "
        f"{floor_s / own_s:.2f}x the floor"
    )


if __name__ == "__main__":
    main()
