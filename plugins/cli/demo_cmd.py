"""``cdp demo``: the whole first pipeline on embedded defaults, from a local Stripe sandbox to the raw zone."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from plugins.cli.output import console, styled
from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from plugins.core.errors import CdpError
from plugins.core.layout import BATCH_SUFFIX, parse_batch_key
from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore
from plugins.manager import get_source
from plugins.meltano.project import find_project_root, run_meltano

DEMO_TENANT = "demo"
DEMO_SOURCE = "stripe"


def demo(
    records: Annotated[int, typer.Option(help="Synthetic records per sandbox resource.")] = 500,
) -> None:
    """Start the Stripe sandbox, run 'meltano run tap-stripe target-s3raw' and show what landed."""
    root = find_project_root()
    source = get_source(DEMO_SOURCE)
    options = SandboxOptions(records=records)
    started = datetime.now(UTC)
    with SandboxServer(source.load_sandbox()(options)) as sandbox:
        console.print(
            styled(("1/2", "bold"), f" {DEMO_SOURCE} sandbox serving {records} records per resource on {sandbox.url}")
        )
        console.print(styled(("2/2", "bold"), f" meltano run {source.executable} target-s3raw (environment dev)"))
        run_meltano(
            ["run", source.executable, "target-s3raw"],
            project_root=root,
            extra_env={"TAP_STRIPE_API_URL": sandbox.url},
        )

    raw_root = root / "data" / "raw"
    store = ObjectStore(str(raw_root))
    files: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    new_counts: dict[str, int] = defaultdict(int)
    for info in store.list(f"{DEMO_TENANT}/{DEMO_SOURCE}"):
        key = parse_batch_key(info.key)
        rows = len(read_batch(store, info.key))
        files[key.stream].append(info.key)
        counts[key.stream] += rows
        if key.landed_at >= started.replace(microsecond=0):
            new_counts[key.stream] += rows
    if not counts:
        raise CdpError(f"the pipeline ran but nothing landed under {raw_root}/{DEMO_TENANT}/{DEMO_SOURCE}")

    table = Table(title=f"raw zone: {raw_root}/{DEMO_TENANT}/{DEMO_SOURCE}")
    for column in ("stream", "files", "records (all runs)", "records (this run)", "latest file"):
        table.add_column(column)
    for stream in sorted(counts):
        latest = files[stream][-1].rsplit("/", 1)[-1]
        table.add_row(stream, str(len(files[stream])), str(counts[stream]), str(new_counts[stream]), latest)
    console.print(table)
    _print_landing_zone_summary(root)
    console.print(
        "Re-running is safe: the tap resumes from its bookmark in .meltano/state, so a second run lands only what is "
        "new (a record at the bookmark's boundary may come again; downstream de-duplicates on id and _sdc_sequence)."
    )


def _print_landing_zone_summary(root: Path) -> None:
    """What else the run left: dead letters by error type, and the schema versions it registered."""
    from schema_registry import SchemaRegistry

    dlq = ObjectStore(str(root / "data" / "dlq"))
    by_error: dict[str, int] = defaultdict(int)
    for info in dlq.list(f"{DEMO_TENANT}/{DEMO_SOURCE}"):
        if not info.key.endswith(BATCH_SUFFIX):
            continue
        error_type = parse_batch_key(info.key).error_type
        if error_type:
            by_error[error_type] += len(read_batch(dlq, info.key))
    dead = ", ".join(f"{count} {error}" for error, count in sorted(by_error.items())) or "none"
    console.print(f"dead letter queue ({root / 'data' / 'dlq'}): {dead}")
    registry = SchemaRegistry(ObjectStore(str(root / "data" / "registry")))
    subjects = [s for s in registry.subjects() if s.startswith(f"{DEMO_TENANT}/{DEMO_SOURCE}/")]
    versions = ", ".join(f"{s.rsplit('/', 1)[-1]} v{registry.versions(s)[-1]}" for s in subjects)
    console.print(f"schema registry ({root / 'data' / 'registry'}): {versions or 'no subjects'}")
