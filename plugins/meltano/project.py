"""The Meltano project the CLI works in, and running Meltano from the project's own environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from plugins.core.errors import CdpError

MELTANO_FILE = "meltano.yml"


class MeltanoError(CdpError):
    """Meltano is missing or a Meltano command failed."""


def locate_project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (the working directory) that holds meltano.yml, or None."""
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if (folder / MELTANO_FILE).is_file()), None)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (the working directory) that holds meltano.yml."""
    root = locate_project_root(start)
    if root is None:
        raise CdpError(
            f"no {MELTANO_FILE} in {(start or Path.cwd()).resolve()} or above it; run this inside the project"
        )
    return root


def environment_bin() -> Path:
    """The bin folder of the Python environment running this code (where tap-* and target-* scripts live)."""
    return Path(sys.executable).parent


def meltano_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Meltano runs in: ours, with this environment's bin first on PATH so plugins resolve."""
    env = dict(os.environ)
    env["PATH"] = f"{environment_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MELTANO_SEND_ANONYMOUS_USAGE_STATS", "false")
    env.update(extra or {})
    return env


def meltano_executable() -> str:
    candidate = environment_bin() / "meltano"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("meltano")
    if found is None:
        raise MeltanoError("meltano is not installed in this environment; run 'make install'")
    return found


def run_meltano(
    args: Sequence[str],
    *,
    project_root: Path,
    environment: str = "dev",
    extra_env: Mapping[str, str] | None = None,
    capture: bool = False,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``meltano --environment ENV ARGS`` in the project; raises MeltanoError when it fails."""
    command = [meltano_executable(), "--environment", environment, *args]
    result = subprocess.run(
        command,
        cwd=project_root,
        env=meltano_env(extra_env),
        text=True,
        capture_output=capture,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        detail = f":\n{result.stderr[-4000:]}" if capture and result.stderr else ""
        raise MeltanoError(f"'meltano {' '.join(args)}' exited with {result.returncode}{detail}")
    return result
