"""tap-salesforce: any sObject through the REST query API or Bulk API 2.0, schemas from ``describe``."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="salesforce",
            tap="taps.salesforce.tap:TapSalesforce",
            # The default objects (the `objects` setting names any sObject); tests keep this equal to DEFAULT_OBJECTS.
            streams=["Account", "Contact", "Lead", "Opportunity", "Campaign", "CampaignMember"],
            description=(
                "Salesforce CRM: any sObject (custom fields included) through REST query or Bulk API 2.0, "
                "incremental on SystemModstamp."
            ),
            sandbox="taps.salesforce.sandbox:create_sandbox",
            sandbox_port=12112,
            webhook_handler="taps.salesforce.webhook:SalesforceWebhookHandler",
        )
    ]
