"""Google audiences through the Data Manager API (``audienceMembers:ingest`` / ``:remove``): docs/activation.md,
"Google audiences"."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ActivatorDescriptor, ChannelLimits

SETTINGS_SCHEMA = {
    "type": "object",
    "required": ["operating_account_id", "audience_id"],
    "properties": {
        "operating_account_id": {"type": "string", "description": "the account that owns the audience (digits)"},
        "operating_account_type": {"type": "string", "default": "GOOGLE_ADS"},
        "login_account_id": {"type": "string", "description": "the manager account the credentials act as"},
        "login_account_type": {"type": "string", "default": "GOOGLE_ADS"},
        "linked_account_id": {"type": "string"},
        "linked_account_type": {"type": "string"},
        "audience_id": {"type": "string", "description": "the Customer Match user list (productDestinationId)"},
        "api_endpoint": {"type": "string", "default": "https://datamanager.googleapis.com"},
        "terms_of_service_accepted": {"type": "boolean", "default": False},
        "validate_only": {"type": "boolean", "default": False},
        "timeout": {"type": "number", "default": 60},
        "access_token": {"type": "string", "secret": True},
        "credentials_file": {"type": "string", "description": "service account or authorized-user JSON"},
    },
}


@hookimpl
def cdp_activators() -> list[ActivatorDescriptor]:
    return [
        ActivatorDescriptor(
            name="google",
            sender="activators.google.sender:GoogleAudienceSender",
            # 10,000 members per request; 300 requests per minute per Cloud project for IngestionService.
            limits=ChannelLimits(max_batch_size=10_000, requests_per_second=5.0),
            channel="ads",
            content=False,
            description="Google audiences (Customer Match) through the Data Manager API",
            settings_schema=SETTINGS_SCHEMA,
            sandbox="activators.google.sandbox:create_sandbox",
            sandbox_port=12132,
        )
    ]
