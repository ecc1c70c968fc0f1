"""Where each zone lives: an explicit URL, else the environment, else the dev default under ``data/``."""

from __future__ import annotations

import os
from enum import StrEnum


class Zone(StrEnum):
    """The stores the pipeline reads and writes."""

    RAW = "raw"
    DLQ = "dlq"
    REGISTRY = "registry"

    @property
    def env_var(self) -> str:
        """The environment variable that sets this zone's URL."""
        return f"CDP_{self.name}_URL"

    @property
    def default_url(self) -> str:
        """The dev default: a local folder under ``data/``."""
        return f"data/{self.value}"


def resolve_zone_url(zone: Zone, explicit: str | None = None) -> str:
    """The URL of ``zone``: ``explicit`` if given, else ``CDP_<ZONE>_URL``, else ``data/<zone>``."""
    return explicit or os.environ.get(zone.env_var) or zone.default_url
