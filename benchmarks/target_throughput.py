"""Throughput of target-s3raw against a plain singer-sdk target on the same synthetic customer stream.

    .venv/bin/python benchmarks/target_throughput.py              # 1,000,000 records (the plain target takes minutes)
    .venv/bin/python benchmarks/target_throughput.py --records 100000

Both targets run as their own process reading the same Singer file (about 0.5 KB nested customer records):
target-s3raw (validation, drift detection, DLQ routing, gzip NDJSON batches in a local raw zone) and a plain
singer-sdk BatchSink target that writes gzip NDJSON with the SDK's default record validation. Prints records/s for
both and the ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from plugins.connectors.synthetic import object_id, person  # noqa: E402

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "created"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": ["string", "null"]},
        "name": {"type": ["string", "null"]},
        "email": {"type": ["string", "null"]},
        "phone": {"type": ["string", "null"]},
        "created": {"type": "integer"},
        "balance": {"type": ["integer", "null"]},
        "currency": {"type": ["string", "null"]},
        "delinquent": {"type": ["boolean", "null"]},
        "livemode": {"type": ["boolean", "null"]},
        "address": {
            "type": ["object", "null"],
            "properties": {
                "line1": {"type": ["string", "null"]},
                "city": {"type": ["string", "null"]},
                "postal_code": {"type": ["string", "null"]},
                "state": {"type": ["string", "null"]},
                "country": {"type": ["string", "null"]},
            },
        },
        "invoice_settings": {
            "type": ["object", "null"],
            "properties": {
                "custom_fields": {
                    "type": ["array", "null"],
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                    },
                },
                "footer": {"type": ["string", "null"]},
            },
        },
        "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
        "preferred_locales": {"type": ["array", "null"], "items": {"type": "string"}},
    },
}

PLAIN_TARGET = """
import gzip, sys
from pathlib import Path
from singer_sdk import Target, typing as th
from singer_sdk.sinks import BatchSink
from singer_sdk.singerlib.json import serialize_json


class GzipNdjsonSink(BatchSink):
    max_size = 20000

    def process_batch(self, context):
        out = Path(self.config["path"]) / f"{self.stream_name}-{self._batch_number()}.ndjson.gz"
        with gzip.open(out, "wt", compresslevel=6) as handle:
            for record in context["records"]:
                handle.write(serialize_json(record) + "\\n")

    def _batch_number(self):
        self._n = getattr(self, "_n", 0) + 1
        return self._n


class PlainTarget(Target):
    name = "target-plain-gzip"
    default_sink_class = GzipNdjsonSink
    config_jsonschema = th.PropertiesList(th.Property("path", th.StringType, required=True)).to_dict()


PlainTarget.cli()
"""


def customer(rng: random.Random, index: int) -> dict[str, Any]:
    someone = person(rng, index)
    return {
        "id": object_id("cus", rng),
        "object": "customer",
        "name": someone.name,
        "email": someone.email,
        "phone": someone.phone,
        "created": 1_700_000_000 + index,
        "balance": rng.randrange(0, 100_000),
        "currency": "usd",
        "delinquent": rng.random() < 0.05,
        "livemode": False,
        "address": {
            "line1": someone.line1,
            "city": someone.city,
            "postal_code": someone.postal_code,
            "state": someone.state,
            "country": someone.country,
        },
        "invoice_settings": {"custom_fields": [{"name": "vat_id", "value": f"DE{index:09d}"}], "footer": None},
        "metadata": {"crm_id": f"crm_{index}", "segment": rng.choice(["smb", "mid", "enterprise"])},
        "preferred_locales": ["en", "de"],
    }


def write_input(path: Path, records: int) -> int:
    """The Singer stream: one SCHEMA, ``records`` RECORDs, a STATE every 10,000 records. Returns its size."""
    rng = random.Random(7)
    extracted = "2026-01-01T00:00:00+00:00"
    with path.open("wb") as out:
        out.write(orjson.dumps({"type": "SCHEMA", "stream": "customers", "schema": SCHEMA, "key_properties": ["id"]}))
        out.write(b"\n")
        for index in range(records):
            message = {"type": "RECORD", "stream": "customers", "record": customer(rng, index)}
            message["time_extracted"] = extracted
            out.write(orjson.dumps(message) + b"\n")
            if (index + 1) % 10_000 == 0:
                out.write(orjson.dumps({"type": "STATE", "value": {"customers": index + 1}}) + b"\n")
        out.write(orjson.dumps({"type": "STATE", "value": {"customers": records}}) + b"\n")
    return path.stat().st_size


def run(command: list[str], input_path: Path) -> float:
    with input_path.open("rb") as stdin:
        started = time.perf_counter()
        subprocess.run(command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started


def count_records(folder: Path) -> int:
    return sum(len(gzip.decompress(path.read_bytes()).splitlines()) for path in folder.rglob("*.ndjson.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the stream (default 1,000,000)")
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="cdp-bench-") as tmp:
        work = Path(tmp)
        input_path = work / "input.jsonl"
        size = write_input(input_path, args.records)
        print(f"input: {args.records:,} records, {size / args.records:.0f} bytes per RECORD line on average")

        config = {
            "raw_url": str(work / "raw"),
            "dlq_url": str(work / "dlq"),
            "registry_url": str(work / "registry"),
            "tenant": "bench",
            "provider": "synthetic",
        }
        (work / "s3raw.json").write_text(json.dumps(config))
        s3raw_seconds = run([str(bindir / "target-s3raw"), "--config", str(work / "s3raw.json")], input_path)
        landed = count_records(work / "raw")
        assert landed == args.records, f"target-s3raw landed {landed} of {args.records} records"

        (work / "plain").mkdir()
        (work / "plain.json").write_text(json.dumps({"path": str(work / "plain")}))
        (work / "plain_target.py").write_text(PLAIN_TARGET)
        plain_command = [sys.executable, str(work / "plain_target.py"), "--config", str(work / "plain.json")]
        plain_seconds = run(plain_command, input_path)
        plain_landed = count_records(work / "plain")
        assert plain_landed == args.records, f"the plain target wrote {plain_landed} of {args.records} records"

    s3raw_rate = args.records / s3raw_seconds
    plain_rate = args.records / plain_seconds
    print(f"target-s3raw:       {s3raw_rate:>10,.0f} records/s ({s3raw_seconds:.1f} s)")
    print(f"plain singer-sdk:   {plain_rate:>10,.0f} records/s ({plain_seconds:.1f} s)")
    print(f"ratio:              {s3raw_rate / plain_rate:>10.1f}x")


if __name__ == "__main__":
    main()
