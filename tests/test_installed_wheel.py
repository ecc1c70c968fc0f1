"""The built wheel, installed into a fresh virtual environment (not this editable checkout), works as production
installs it: the ``cdp`` command starts, finds every plugin, and the PostgreSQL webhook log opens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a source checkout holds besides the package sources: environments, caches, build output, local data.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "data", ".meltano", "output"
)


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not installed; `make install` installs it into .venv")
    return uv


def _run(*command: str | Path, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    assert result.returncode == 0, f"{command[:3]} exited {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def test_the_installed_wheel_runs_cdp_and_opens_the_postgresql_webhook_log(tmp_path: Path, postgres_url: str) -> None:
    uv = _uv()
    # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    _run(uv, "build", "--wheel", "--out-dir", tmp_path / "dist", source)
    [wheel] = (tmp_path / "dist").glob("cdp_connectors-*.whl")

    venv = tmp_path / "venv"
    _run(uv, "venv", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    # A cache of its own, removed once installed: the user's cache is left as it was. Spark ships only as a source
    # archive, and each install that cannot revalidate it (a proxy that strips caching headers) keeps a new 1.4 GB
    # build in the cache. The runtime holds Spark and a Java runtime (about 1 GB): a loaded machine needs time.
    cache = tmp_path / "uv-cache"
    own_cache = {**os.environ, "UV_CACHE_DIR": str(cache)}
    try:
        _run(uv, "pip", "install", "--python", python, wheel, timeout=600, env=own_cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    # Run from an empty folder, so nothing is imported from the checkout.
    workdir = tmp_path / "work"
    workdir.mkdir()
    cdp = venv / "bin" / "cdp"
    assert "Usage" in _run(cdp, "--help", cwd=workdir)
    plugins = json.loads(_run(cdp, "plugins", "list", "--json", cwd=workdir))
    names = json.dumps(plugins)
    for plugin in ("tap-stripe", "tap-shopify", "tap-salesforce", "target-s3raw", "tap-webhooks"):
        assert plugin in names

    probe = (
        "import sys, psycopg, plugins.webhooks.postgres_log as m; "
        "assert m.__file__.startswith(sys.prefix), m.__file__; "
        f"m.PostgresWebhookLog({postgres_url!r}).consumers(); print('ok')"
    )
    assert _run(python, "-c", probe, cwd=workdir).strip() == "ok"
    consumers = _run(cdp, "webhooks", "consumers", "--log-url", postgres_url, "--json", cwd=workdir)
    assert json.loads(consumers) is not None
