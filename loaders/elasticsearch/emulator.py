"""noida-db's Elasticsearch 8.15 API emulator, started for tests, the benchmark and the demo (a dev dependency).

noida-db ships a binary and no pytest fixture: this starts it in the foreground with only its Elasticsearch service,
on a free loopback port, its data in ``data_dir``, and stops it on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from plugins.connectors.testing import wait_until
from plugins.core.errors import CdpError

STARTUP_SECONDS = 30


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary() -> Path:
    """The server binary itself: the ``noida-db`` script is a Python wrapper, whose child outlives it when stopped."""
    from importlib.resources import files

    try:
        binary = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        binary = Path("/nonexistent")
    if not binary.is_file():
        raise CdpError("noida-db is not installed: pip install 'cdp-connectors[dev]'")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)  # As the wrapper does: wheels do not always keep the mode.
    return binary


@contextmanager
def noida_elasticsearch(data_dir: Path) -> Iterator[str]:
    """The URL of a noida-db serving the Elasticsearch API until the block ends."""
    import requests

    binary = _binary()
    port = _free_port()
    command = [str(binary), "start", "--data-dir", str(data_dir), "--only", "elasticsearch"]
    process = subprocess.Popen(
        [*command, "--elasticsearch-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise CdpError(f"noida-db exited with {process.returncode} while starting")
        try:
            return requests.get(url, timeout=1).ok
        except requests.ConnectionError:
            return False

    try:
        wait_until(ready, STARTUP_SECONDS, "noida-db's Elasticsearch API")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
