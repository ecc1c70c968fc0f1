"""What every hook receives: the project a command runs in and its settings.

Hooks take ``context`` as an argument (pluggy lets an implementation leave it out), so a plugin that needs the
project's root or a zone's URL asks the context instead of reading the environment itself, and adding context later
breaks no plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plugins.core.zones import Zone, resolve_zone_url
from plugins.meltano.project import locate_project_root


@dataclass(frozen=True)
class CdpContext:
    """The project (the folder holding meltano.yml, if any) and the settings a command runs with."""

    project_root: Path | None = None

    @classmethod
    def discover(cls, start: Path | None = None) -> CdpContext:
        """The context of the working directory: the nearest meltano.yml at or above it, and this environment."""
        return cls(project_root=locate_project_root(start))

    def zone_url(self, zone: Zone, explicit: str | None = None) -> str:
        """The URL of ``zone``: ``explicit`` if given, else its environment variable, else the dev default."""
        return resolve_zone_url(zone, explicit)
