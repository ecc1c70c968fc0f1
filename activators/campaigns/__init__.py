"""Campaigns (``cdp_commands``: ``campaign``): a segment's audience sent to an activation destination with content.

store.py keeps campaigns and contents (tables, YAML, the status machine, schedules), content.py renders the
templates and assigns A/B variants, launch.py refreshes and exports the segment and hands the members to the delivery
engine (``plugins.activation.deliver``), status.py reads what was sent; campaign_cmd.py is ``cdp campaign``.
docs/activation.md says how they fit.
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import CommandGroup


@hookimpl
def cdp_commands() -> list[CommandGroup]:
    from activators.campaigns.campaign_cmd import app

    return [
        CommandGroup(
            name="campaign",
            app=app,
            help="Campaigns: a segment's audience sent to a destination with content (create, apply, list, show, "
            "launch, pause, resume, status, preview, run --due).",
        )
    ]
