"""`cdp demo` (what `make demo` runs) lands the sandbox's records and can be run again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.meltano


def test_demo_lands_every_stream_reports_it_and_reruns_safely(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "meltano.yml", tmp_path / "meltano.yml")
    command = [str(Path(sys.executable).parent / "cdp"), "demo", "--records", "40"]
    env = {**os.environ, "COLUMNS": "200"}

    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "dead letter queue" in first.stdout
    assert "schema registry" in first.stdout
    raw = ObjectStore(str(tmp_path / "data" / "raw"))
    landed = {info.key: len(read_batch(raw, info.key)) for info in raw.list("demo/stripe")}
    assert any("/customers_" in key for key in landed)
    assert sum(n for key, n in landed.items() if "/customers_" in key) == 40

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    again = {info.key for info in raw.list("demo/stripe")} - set(landed)
    assert not any("/customers_" in key for key in again)  # the bookmark holds: no customer lands twice
