"""activator-facebook: Meta Custom Audiences (customer list), members added and removed through the Marketing API."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ActivatorDescriptor, ChannelLimits


@hookimpl
def cdp_activators() -> list[ActivatorDescriptor]:
    return [
        ActivatorDescriptor(
            name="facebook",
            sender="activators.facebook.sender:FacebookSender",
            # Meta takes at most 10,000 members per request; the pace is a conservative share of the Custom Audience
            # use case's rate limit (the sender backs off on code 80003/17 as the usage header says).
            limits=ChannelLimits(max_batch_size=10_000, requests_per_second=5.0),
            channel="ads",
            content=False,
            description="Meta Custom Audiences: hashed customer lists added and removed in upload sessions.",
            settings_schema={
                "type": "object",
                "properties": {
                    "access_token": {"type": "string", "secret": True},
                    "audience_id": {"type": "string", "pattern": "^[0-9]+$"},
                    "api_version": {"type": "string", "pattern": "^v[0-9]+\\.[0-9]+$"},
                    "base_url": {"type": "string"},
                    "timeout": {"type": "number", "exclusiveMinimum": 0},
                    "estimated_num_total": {"type": "integer", "minimum": 1},
                },
                "required": ["access_token", "audience_id"],
            },
            sandbox="activators.facebook.sandbox:create_sandbox",
            sandbox_port=12131,
        )
    ]
