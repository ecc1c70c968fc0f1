"""The columns a person-record (``customer_records``) and a unified profile (``customers``) share.

Two built-in transforms use them and a connector may not import a sibling connector, so they live here.
"""

from __future__ import annotations

from plugins.transforms.consent import CHANNELS

#: The provider ids of a person-record, typed as the identity map types them.
PROVIDER_ID_TYPES = ("stripe_customer", "shopify_customer", "salesforce_contact", "salesforce_lead")
CONSENT_STATES = ("granted", "denied")
#: Column groups the customers table shares: a profile takes each group from one record.
NAME_COLUMNS = ("first_name", "last_name", "full_name")
ADDRESS_COLUMNS = ("address_line1", "address_line2", "city", "region", "postal_code", "country")
CONSENT_COLUMNS = tuple(name for channel in CHANNELS for name in (f"consent_{channel}", f"consent_{channel}_at"))

__all__ = ["ADDRESS_COLUMNS", "CONSENT_COLUMNS", "CONSENT_STATES", "NAME_COLUMNS", "PROVIDER_ID_TYPES"]
