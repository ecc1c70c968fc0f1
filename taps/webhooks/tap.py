"""tap-webhooks: drains one tenant's and provider's events from the durable webhook log as Singer records."""

from __future__ import annotations

import sys
from functools import cached_property
from typing import Any, cast

from singer_sdk import Stream, Tap
from singer_sdk import typing as th

from plugins.connectors.tap_runtime import check_state_tenant
from plugins.connectors.webhook_signing import WebhookHandler
from plugins.core.errors import CdpError, ConfigError
from plugins.core.layout import validate_name
from plugins.manager import UnknownPluginError, get_source
from plugins.webhooks.log import LOG_URL_ENV_VAR, WebhookLog, open_log
from taps.webhooks.streams import WebhookEventStream


class TapWebhooks(Tap):
    """Singer tap over the webhook log; streams come from the provider's webhook handler."""

    name = "tap-webhooks"

    config_jsonschema = th.PropertiesList(
        th.Property(
            "provider",
            th.StringType,
            required=True,
            title="Provider",
            description="Whose events to drain: a source with a webhook handler (stripe, shopify, salesforce...).",
        ),
        th.Property("tenant", th.StringType, required=True, title="Tenant", description="Tenant name, e.g. 'acme'."),
        th.Property(
            "log_url",
            th.StringType,
            title="Webhook log URL",
            description=f"The receiver's log: a folder, file://... or postgresql://... [env {LOG_URL_ENV_VAR}; "
            "default data/webhooks].",
        ),
    ).to_dict()

    @cached_property
    def handler(self) -> WebhookHandler:
        provider = validate_name("provider", self.config["provider"])
        try:
            source = get_source(provider)
        except UnknownPluginError as exc:
            raise ConfigError("provider", str(exc)) from exc
        if source.webhook_handler is None:
            raise ConfigError("provider", f"source '{provider}' has no webhook handler")
        return source.load_webhook_handler()

    @cached_property
    def webhook_log(self) -> WebhookLog:
        return open_log(self.config.get("log_url"))

    @classmethod
    def invoke(cls, *args: Any, **kwargs: Any) -> None:
        """The SDK's command line, but a bad bookmark or setting ends the run with one line and exit 1."""
        try:
            super().invoke(*args, **kwargs)
        except CdpError as exc:
            cls.logger.error("%s", exc)
            sys.stderr.flush()
            sys.exit(1)

    def load_state(self, state: dict[str, Any]) -> None:
        """Bookmarks are log positions shared by every tenant of the log: a state written for another tenant would
        skip this tenant's events before its position, so it is refused, and this run's STATE records the tenant."""
        tenant = validate_name("tenant", self.config["tenant"])
        check_state_tenant(state, tenant, self.logger)
        super().load_state(state)
        cast(dict[str, Any], self.state)["tenant"] = tenant

    def discover_streams(self) -> list[Stream]:
        validate_name("tenant", self.config["tenant"])
        # A handler may declare its payload's properties per stream (``stream_properties``; the campaign feedback
        # handlers do) so the transforms can read them from the raw zone.
        declared = getattr(self.handler, "stream_properties", {})
        return [WebhookEventStream(self, name, self.webhook_log, declared.get(name)) for name in self.handler.streams]


if __name__ == "__main__":
    TapWebhooks.cli()
