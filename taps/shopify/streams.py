"""Shopify streams: one small class per Admin API connection (API version 2026-01).

``base_node_cost`` and each nested connection's ``node_cost`` follow Shopify's cost rules (objects 1, scalars and
enums 0, connections 2 + first x node); the tests check every stream's page cost against the sandbox's calculation.
"""

from __future__ import annotations

from taps.shopify.client import NestedConnection, ShopifyStream

MONEY_BAG_COST = 3  # MoneyBag { shopMoney presentmentMoney }: three objects


class CustomersStream(ShopifyStream):
    """Customers with their addresses, default email and phone (``defaultEmailAddress`` replaced ``email``)."""

    name = "customers"
    root_field = "customers"
    record_field = "customer"
    selection = """
      id legacyResourceId firstName lastName displayName
      defaultEmailAddress { emailAddress marketingState }
      defaultPhoneNumber { phoneNumber marketingState }
      defaultAddress { ...Address }
      {addressesV2}
      amountSpent { amount currencyCode }
      numberOfOrders state locale note tags taxExempt verifiedEmail dataSaleOptOut createdAt updatedAt
      {metafields}
    """
    # node + defaultEmailAddress + defaultPhoneNumber + defaultAddress + amountSpent
    base_node_cost = 5
    nested = (
        NestedConnection("addressesV2", first=10, node_cost=1, selection="...Address", node_type="MailingAddress"),
    )


class OrdersStream(ShopifyStream):
    """Orders with all their line items."""

    name = "orders"
    root_field = "orders"
    record_field = "order"
    selection = """
      id legacyResourceId name email phone customer { id }
      createdAt updatedAt processedAt cancelledAt closedAt currencyCode
      displayFinancialStatus displayFulfillmentStatus
      subtotalPriceSet { ...Money } totalPriceSet { ...Money } totalTaxSet { ...Money } totalDiscountsSet { ...Money }
      shippingAddress { ...Address } billingAddress { ...Address }
      tags note test
      {lineItems}
      {metafields}
    """
    # node + customer + 4 MoneyBags + 2 addresses
    base_node_cost = 1 + 1 + 4 * MONEY_BAG_COST + 2
    nested = (
        NestedConnection(
            "lineItems",
            first=20,
            # node + variant + product + 2 MoneyBags
            node_cost=1 + 1 + 1 + 2 * MONEY_BAG_COST,
            selection="""
              id name title quantity currentQuantity sku vendor requiresShipping taxable
              variant { id } product { id } originalUnitPriceSet { ...Money } discountedTotalSet { ...Money }
            """,
            node_type="LineItem",
        ),
    )


class ProductsStream(ShopifyStream):
    """Products with all their variants."""

    name = "products"
    root_field = "products"
    record_field = "product"
    selection = """
      id legacyResourceId title handle vendor productType status description descriptionHtml tags totalInventory
      createdAt updatedAt publishedAt
      {variants}
      {metafields}
    """
    base_node_cost = 1
    nested = (
        NestedConnection(
            "variants",
            first=50,
            node_cost=3,  # node + selectedOptions + inventoryItem
            selection="""
              id legacyResourceId title displayName sku barcode price compareAtPrice position inventoryQuantity
              taxable availableForSale selectedOptions { name value } createdAt updatedAt inventoryItem { id }
            """,
            node_type="ProductVariant",
        ),
    )


class InventoryItemsStream(ShopifyStream):
    """Inventory items (SKU, cost, origin). The API cannot sort them by update time, so a run's bookmark is final
    only once the stream completes; an interrupted run starts again from the previous bookmark."""

    name = "inventory_items"
    root_field = "inventoryItems"
    record_field = "inventoryItem"
    sort_key = None  # so not sorted (is_sorted)
    supports_metafields = False
    selection = """
      id legacyResourceId sku tracked requiresShipping countryCodeOfOrigin harmonizedSystemCode
      unitCost { amount currencyCode } createdAt updatedAt
      {variants}
    """
    base_node_cost = 2  # node + unitCost
    nested = (NestedConnection("variants", first=5, node_cost=1, selection="id", node_type="ProductVariant"),)


class DraftOrdersStream(ShopifyStream):
    """Draft orders with all their line items. Chosen over abandoned checkouts because ``draftOrders`` sorts by
    ``UPDATED_AT`` and filters on ``updated_at``, so the stream is incremental and resumable."""

    name = "draft_orders"
    root_field = "draftOrders"
    record_field = "draftOrder"
    selection = """
      id legacyResourceId name status email customer { id } currencyCode
      subtotalPriceSet { ...Money } totalPriceSet { ...Money } tags note2 order { id }
      createdAt updatedAt completedAt invoiceSentAt
      {lineItems}
      {metafields}
    """
    # node + customer + 2 MoneyBags + order
    base_node_cost = 1 + 1 + 2 * MONEY_BAG_COST + 1
    nested = (
        NestedConnection(
            "lineItems",
            first=20,
            node_cost=1 + 1 + 2 * MONEY_BAG_COST,  # node + variant + 2 MoneyBags
            selection="""
              id name title quantity sku variant { id } originalTotalSet { ...Money } discountedTotalSet { ...Money }
            """,
            node_type="DraftOrderLineItem",
        ),
    )


STREAM_TYPES: list[type[ShopifyStream]] = [
    CustomersStream,
    OrdersStream,
    ProductsStream,
    InventoryItemsStream,
    DraftOrdersStream,
]
