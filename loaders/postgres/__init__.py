"""The PostgreSQL loader (``cdp_loaders``: ``postgres``) and the embedded server's commands (``cdp db``).

See loader.py for the load itself and docs/loading.md for modes, guarantees and sizing.
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import CommandGroup, LoaderDescriptor


@hookimpl
def cdp_loaders() -> list[LoaderDescriptor]:
    return [
        LoaderDescriptor(
            name="postgres",
            loader="loaders.postgres.loader:PostgresLoader",
            description="Processed tables into PostgreSQL: upserts skip unchanged rows; full refresh swaps atomically.",
            settings_schema={
                "type": "object",
                "properties": {
                    "postgres_url": {
                        "type": "string",
                        "title": "PostgreSQL URL",
                        "description": "libpq URL (TLS options pass through); else CDP_POSTGRES_URL, else the "
                        "embedded server in data/postgres.",
                        "secret": True,
                    },
                    "statement_timeout_ms": {"type": "integer", "default": 1800000},
                    "lock_timeout_ms": {"type": "integer", "default": 5000},
                    "pool_size": {"type": "integer", "default": 4},
                },
            },
            local_server="loaders.postgres.embedded:local_server",
            url_env_var="CDP_POSTGRES_URL",
        )
    ]


@hookimpl
def cdp_commands() -> list[CommandGroup]:
    from loaders.postgres.db_cmd import app

    return [CommandGroup(name="db", app=app, help="The embedded PostgreSQL: start, stop, status, url.")]
