"""Where each zone lives: an explicit URL, else its environment variable, else a prefix under the lake, else ``data/``.

The lake (``--lake-url`` / ``CDP_LAKE_URL``) is one base URL for every zone: each zone is the prefix named after it
(``{lake}/raw``, ``{lake}/dlq``, ``{lake}/registry``) unless that zone is set on its own, which always wins.
"""

from __future__ import annotations

import os
from enum import StrEnum

LAKE_ENV_VAR = "CDP_LAKE_URL"
DEFAULT_LAKE = "data"


class Zone(StrEnum):
    """The stores the pipeline reads and writes."""

    RAW = "raw"
    DLQ = "dlq"
    REGISTRY = "registry"
    PROCESSED = "processed"

    @property
    def env_var(self) -> str:
        """The environment variable that sets this zone's URL."""
        return f"CDP_{self.name}_URL"

    @property
    def default_url(self) -> str:
        """The dev default: a local folder under ``data/``."""
        return f"{DEFAULT_LAKE}/{self.value}"


def zone_under(lake: str, zone: Zone) -> str:
    """``zone``'s URL as a prefix of ``lake`` (a folder, ``file://`` or ``s3://bucket/prefix``)."""
    return f"{lake.rstrip('/')}/{zone.value}"


def configured_zone_url(zone: Zone, explicit: str | None = None, lake: str | None = None) -> str | None:
    """The URL of ``zone`` if anything sets it (``explicit``, ``CDP_<ZONE>_URL``, ``lake``, ``CDP_LAKE_URL``);
    None when only the dev default would apply."""
    own = explicit or os.environ.get(zone.env_var)
    if own:
        return own
    base = lake or os.environ.get(LAKE_ENV_VAR)
    return zone_under(base, zone) if base else None


def resolve_zone_url(zone: Zone, explicit: str | None = None, lake: str | None = None) -> str:
    """The URL of ``zone``: ``explicit``, else ``CDP_<ZONE>_URL``, else ``{lake}/<zone>`` (``lake`` or
    ``CDP_LAKE_URL``), else ``data/<zone>``."""
    return configured_zone_url(zone, explicit, lake) or zone.default_url
