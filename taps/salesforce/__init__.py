"""tap-salesforce: any sObject through the REST query API or Bulk API 2.0, schemas from ``describe``."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor
from taps.salesforce.sandbox import create_sandbox
from taps.salesforce.streams import DEFAULT_OBJECTS
from taps.salesforce.tap import TapSalesforce
from taps.salesforce.webhook import SalesforceWebhookHandler


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="salesforce",
            tap_class=TapSalesforce,
            streams=list(DEFAULT_OBJECTS),  # The default; the `objects` setting names any sObject.
            description=(
                "Salesforce CRM: any sObject (custom fields included) through REST query or Bulk API 2.0, "
                "incremental on SystemModstamp."
            ),
            sandbox=create_sandbox,
            sandbox_port=12112,
            webhook_handler=SalesforceWebhookHandler(),
        )
    ]
