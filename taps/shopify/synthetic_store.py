"""A deterministic synthetic Shopify store for the sandbox: customers, products with variants, inventory items, orders
with line items and draft orders, shaped like the Admin GraphQL API 2026-01 returns them (field names, gid:// ids,
UnsignedInt64 and Decimal as strings, ISO-8601 UTC timestamps). Same size and seed, same store.

Records are dicts keyed by GraphQL field names. Nested connections (addresses, metafields, line items, variants) sit
under ``_``-prefixed keys that the sandbox's resolvers page through; references (an order's customer, a line item's
variant) are the referenced record itself, so an update is visible everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from plugins.connectors.synthetic import SyntheticPerson, population

Record = dict[str, Any]

STORE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
SHOP_CURRENCY = "USD"
_RATES = {"USD": Decimal("1"), "EUR": Decimal("0.92"), "GBP": Decimal("0.79"), "CAD": Decimal("1.36")}
_COUNTRY_NAMES = {
    "DE": "Germany",
    "FR": "France",
    "BR": "Brazil",
    "US": "United States",
    "CA": "Canada",
    "PL": "Poland",
    "JP": "Japan",
    "CH": "Switzerland",
    "IE": "Ireland",
    "AU": "Australia",
}
_PRODUCT_NOUNS = ["Café Mug", "Schürze", "Tote Bag", "Teekanne", "Bougie Parfumée", "Ручка", "茶碗", "Poncho Andino"]
_PRODUCT_ADJECTIVES = ["Organic", "Handmade", "Vintage", "Nordic", "Çok Güzel", "Édition Limitée", "Klassisch"]
_VENDORS = ["Atelier Ørsted", "Kōbō Tanaka", "Maison Dupré", "Fábrica Lisboa", "Northwind Goods"]
_PRODUCT_TYPES = ["Kitchen", "Apparel", "Home", "Accessories"]
_SIZES = ["S", "M", "L"]
_COLORS = ["Indigo", "Crème", "Olive", "Schwarz"]
_TAGS = ["vip", "wholesale", "newsletter", "returning", "eco", "gift"]
_LOCALES = ["en", "fr", "de", "pt-BR", "ja", "pl"]
_METAFIELDS = [
    ("custom", "loyalty_tier", "single_line_text_field", ["bronze", "silver", "gold", "platine"]),
    ("custom", "birthday", "date", ["1990-04-12", "1985-11-30", "2001-02-03"]),
    ("custom", "care_notes", "multi_line_text_field", ["Lavage à 30°", "Nur Handwäsche\nNicht bügeln", "手洗い"]),
    ("custom", "points", "number_integer", ["0", "120", "4500"]),
]


def iso(moment: datetime) -> str:
    """Shopify's DateTime format: UTC, whole seconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gid(kind: str, number: int) -> str:
    """A Shopify global id such as ``gid://shopify/Customer/7000000001``."""
    return f"gid://shopify/{kind}/{number}"


def money(amount: Decimal, currency: str = SHOP_CURRENCY) -> Record:
    return {"amount": str(amount.quantize(Decimal("0.01"))), "currencyCode": currency}


def money_bag(amount: Decimal, presentment: str) -> Record:
    return {"shopMoney": money(amount), "presentmentMoney": money(amount * _RATES[presentment], presentment)}


@dataclass
class SyntheticShop:
    """Every resource of one synthetic store, by kind, in id order."""

    records: int
    seed: int
    customers: list[Record] = field(default_factory=list)
    products: list[Record] = field(default_factory=list)
    variants: list[Record] = field(default_factory=list)
    inventory_items: list[Record] = field(default_factory=list)
    orders: list[Record] = field(default_factory=list)
    draft_orders: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)  # noqa: S311  # reproducible synthetic data, not security
        self._ids = {"MailingAddress": 9_100_000_000, "Metafield": 9_200_000_000, "LineItem": 9_300_000_000}
        self.customers = [self._customer(rng, i) for i in range(self.records)]
        self.products = [self._product(rng, i) for i in range(max(1, self.records // 2))]
        self.orders = [self._order(rng, i) for i in range(self.records)]
        self.draft_orders = [self._draft_order(rng, i) for i in range(max(1, self.records // 4))]

    def _next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def _timestamps(self, rng: random.Random, index: int, spacing_hours: int = 3) -> tuple[datetime, datetime]:
        created = STORE_EPOCH + timedelta(hours=index * spacing_hours, seconds=rng.randrange(3600))
        return created, created + timedelta(hours=rng.randrange(0, 24 * 300), seconds=rng.randrange(3600))

    def _metafields(self, rng: random.Random, created: datetime, updated: datetime) -> list[Record]:
        chosen = rng.sample(_METAFIELDS, k=rng.choice([0, 0, 1, 2]))
        return [
            {
                "id": gid("Metafield", self._next_id("Metafield")),
                "namespace": namespace,
                "key": key,
                "type": type_,
                "value": rng.choice(values),
                "createdAt": iso(created),
                "updatedAt": iso(updated),
            }
            for namespace, key, type_, values in chosen
        ]

    def _address(self, who: SyntheticPerson, rng: random.Random) -> Record:
        return {
            "id": f"{gid('MailingAddress', self._next_id('MailingAddress'))}?model_name=CustomerAddress",
            "address1": who.line1,
            "address2": rng.choice([None, None, "Apt. 4", "2º andar", "Hinterhaus"]),
            "city": who.city,
            "company": rng.choice([None, None, "Ørsted & Søn", "Łódź Logistics"]),
            "country": _COUNTRY_NAMES[who.country],
            "countryCodeV2": who.country,
            "firstName": who.first_name,
            "lastName": who.last_name,
            "name": who.name,
            "phone": who.phone,
            "province": who.state,
            "provinceCode": who.state,
            "zip": who.postal_code,
        }

    def _customer(self, rng: random.Random, index: int) -> Record:
        number = 7_000_000_000 + index + 1
        people = population(self.seed)
        who = people.member("shopify", index)
        created, updated = self._timestamps(rng, index)
        addresses = [self._address(who, rng)]
        if rng.random() < 0.3:
            # A second address (work, a relative's) of the same customer: someone else's street, their own phone.
            elsewhere = people.stranger(index)
            addresses.append(self._address(replace(elsewhere, phone=who.phone), rng))
        # Shopify keeps a customer's phone in E.164 and unique within the store, as it keeps the email.
        phone = (
            {"phoneNumber": who.phone, "marketingState": rng.choice(["NOT_SUBSCRIBED", "SUBSCRIBED"])}
            if who.phone
            else None
        )
        return {
            "id": gid("Customer", number),
            "legacyResourceId": str(number),
            "firstName": who.first_name,
            "lastName": who.last_name,
            "displayName": who.name,
            "defaultEmailAddress": {
                "emailAddress": who.email,
                "marketingState": rng.choice(["NOT_SUBSCRIBED", "SUBSCRIBED", "UNSUBSCRIBED", "PENDING"]),
            },
            "defaultPhoneNumber": phone,
            "defaultAddress": addresses[0],
            "_addresses": addresses,
            "amountSpent": money(Decimal(rng.randrange(0, 250_000)) / 100),
            "numberOfOrders": str(rng.randrange(0, 12)),
            "state": rng.choice(["ENABLED", "ENABLED", "DISABLED", "INVITED"]),
            "locale": rng.choice(_LOCALES),
            "note": rng.choice([None, None, "Préfère la livraison le samedi", "Allergie: Nüsse"]),
            "tags": sorted(rng.sample(_TAGS, k=rng.randrange(0, 3))),
            "taxExempt": rng.random() < 0.05,
            "verifiedEmail": rng.random() < 0.9,
            "dataSaleOptOut": rng.random() < 0.1,
            "createdAt": iso(created),
            "updatedAt": iso(updated),
            "_metafields": self._metafields(rng, created, updated),
        }

    def _product(self, rng: random.Random, index: int) -> Record:
        number = 8_000_000_000 + index + 1
        created, updated = self._timestamps(rng, index, spacing_hours=6)
        title = f"{rng.choice(_PRODUCT_ADJECTIVES)} {rng.choice(_PRODUCT_NOUNS)} {index + 1}"
        product: Record = {
            "id": gid("Product", number),
            "legacyResourceId": str(number),
            "title": title,
            "handle": "-".join(title.lower().split()),
            "vendor": rng.choice(_VENDORS),
            "productType": rng.choice(_PRODUCT_TYPES),
            "status": rng.choice(["ACTIVE", "ACTIVE", "ACTIVE", "DRAFT", "ARCHIVED"]),
            "description": f"{title}: fait main, 100 % coton.",
            "descriptionHtml": f"<p>{title}: <strong>fait main</strong>, 100 % coton.</p>",
            "tags": sorted(rng.sample(_TAGS, k=rng.randrange(0, 3))),
            "createdAt": iso(created),
            "updatedAt": iso(updated),
            "publishedAt": iso(created + timedelta(days=1)) if rng.random() < 0.8 else None,
            "_metafields": self._metafields(rng, created, updated),
        }
        base_price = Decimal(rng.randrange(500, 20_000)) / 100
        variants = []
        for position in range(1, rng.randrange(1, 4) + 1):
            variant_number = 4_000_000_000 + len(self.variants) + 1
            size, color = _SIZES[(position - 1) % 3], rng.choice(_COLORS)
            sku = f"SKU-{index + 1:05d}-{position}"
            variant: Record = {
                "id": gid("ProductVariant", variant_number),
                "legacyResourceId": str(variant_number),
                "title": f"{size} / {color}",
                "displayName": f"{title} - {size} / {color}",
                "sku": sku,
                "barcode": f"{rng.randrange(10**12, 10**13)}",
                "price": str((base_price + position).quantize(Decimal("0.01"))),
                "compareAtPrice": str((base_price + position + 5).quantize(Decimal("0.01")))
                if rng.random() < 0.3
                else None,
                "position": position,
                "inventoryQuantity": rng.randrange(-2, 120),
                "taxable": True,
                "availableForSale": product["status"] == "ACTIVE",
                "selectedOptions": [{"name": "Size", "value": size}, {"name": "Color", "value": color}],
                "createdAt": product["createdAt"],
                "updatedAt": product["updatedAt"],
                "product": product,
                "_metafields": self._metafields(rng, created, updated),
            }
            item_number = 5_000_000_000 + len(self.inventory_items) + 1
            item_updated = updated + timedelta(hours=rng.randrange(0, 24 * 30))
            item: Record = {
                "id": gid("InventoryItem", item_number),
                "legacyResourceId": str(item_number),
                "sku": sku,
                "tracked": rng.random() < 0.9,
                "requiresShipping": True,
                "countryCodeOfOrigin": rng.choice([None, "DE", "FR", "JP", "BR"]),
                "harmonizedSystemCode": rng.choice([None, "691200", "420292"]),
                "unitCost": money(base_price * Decimal("0.4")) if rng.random() < 0.7 else None,
                "createdAt": product["createdAt"],
                "updatedAt": iso(item_updated),
                "variant": variant,
                "_variants": [variant],
            }
            variant["inventoryItem"] = item
            variants.append(variant)
            self.variants.append(variant)
            self.inventory_items.append(item)
        product["_variants"] = variants
        product["totalInventory"] = sum(max(0, v["inventoryQuantity"]) for v in variants)
        return product

    def _line_items(self, rng: random.Random, presentment: str, kind: str) -> tuple[list[Record], Decimal]:
        items, subtotal = [], Decimal(0)
        for variant in rng.sample(self.variants, k=min(len(self.variants), rng.randrange(1, 6))):
            quantity = rng.randrange(1, 4)
            unit = Decimal(variant["price"])
            subtotal += unit * quantity
            item: Record = {
                "id": gid(kind, self._next_id("LineItem")),
                "name": variant["displayName"],
                "title": variant["product"]["title"],
                "quantity": quantity,
                "sku": variant["sku"],
                "variant": variant,
                "discountedTotalSet": money_bag(unit * quantity, presentment),
            }
            if kind == "LineItem":
                item.update(
                    {
                        "currentQuantity": quantity,
                        "vendor": variant["product"]["vendor"],
                        "requiresShipping": True,
                        "taxable": True,
                        "product": variant["product"],
                        "originalUnitPriceSet": money_bag(unit, presentment),
                    }
                )
            else:
                item["originalTotalSet"] = money_bag(unit * quantity, presentment)
            items.append(item)
        return items, subtotal

    def _order(self, rng: random.Random, index: int) -> Record:
        number = 6_000_000_000 + index + 1
        customer = rng.choice(self.customers) if self.customers and rng.random() < 0.9 else None
        created, updated = self._timestamps(rng, index, spacing_hours=2)
        presentment = rng.choice(list(_RATES))
        line_items, subtotal = self._line_items(rng, presentment, "LineItem")
        tax = (subtotal * Decimal("0.08")).quantize(Decimal("0.01"))
        address = customer["defaultAddress"] if customer else None
        financial = rng.choice(["PAID", "PAID", "PAID", "PENDING", "REFUNDED", "PARTIALLY_REFUNDED"])
        return {
            "id": gid("Order", number),
            "legacyResourceId": str(number),
            "name": f"#{1001 + index}",
            "email": customer["defaultEmailAddress"]["emailAddress"] if customer else None,
            "phone": None,
            "customer": customer,
            "createdAt": iso(created),
            "updatedAt": iso(updated),
            "processedAt": iso(created),
            "cancelledAt": iso(updated) if financial == "REFUNDED" and rng.random() < 0.5 else None,
            "closedAt": iso(updated) if financial == "PAID" and rng.random() < 0.6 else None,
            "currencyCode": SHOP_CURRENCY,
            "displayFinancialStatus": financial,
            "displayFulfillmentStatus": rng.choice(["FULFILLED", "UNFULFILLED", "PARTIALLY_FULFILLED"]),
            "subtotalPriceSet": money_bag(subtotal, presentment),
            "totalPriceSet": money_bag(subtotal + tax, presentment),
            "totalTaxSet": money_bag(tax, presentment),
            "totalDiscountsSet": money_bag(Decimal(0), presentment),
            "shippingAddress": address,
            "billingAddress": address,
            "tags": sorted(rng.sample(_TAGS, k=rng.randrange(0, 2))),
            "note": rng.choice([None, None, "Bitte als Geschenk verpacken 🎁", "Livraison express"]),
            "test": False,
            "_lineItems": line_items,
            "_metafields": self._metafields(rng, created, updated),
        }

    def _draft_order(self, rng: random.Random, index: int) -> Record:
        number = 3_000_000_000 + index + 1
        customer = rng.choice(self.customers) if self.customers else None
        created, updated = self._timestamps(rng, index, spacing_hours=8)
        presentment = rng.choice(list(_RATES))
        line_items, subtotal = self._line_items(rng, presentment, "DraftOrderLineItem")
        status = rng.choice(["OPEN", "INVOICE_SENT", "COMPLETED"])
        return {
            "id": gid("DraftOrder", number),
            "legacyResourceId": str(number),
            "name": f"#D{index + 1}",
            "status": status,
            "email": customer["defaultEmailAddress"]["emailAddress"] if customer else None,
            "customer": customer,
            "currencyCode": SHOP_CURRENCY,
            "subtotalPriceSet": money_bag(subtotal, presentment),
            "totalPriceSet": money_bag(subtotal, presentment),
            "tags": [],
            "note2": rng.choice([None, "Angebot für Großkunden", "見積もり"]),
            "order": rng.choice(self.orders) if status == "COMPLETED" and self.orders else None,
            "createdAt": iso(created),
            "updatedAt": iso(updated),
            "completedAt": iso(updated) if status == "COMPLETED" else None,
            "invoiceSentAt": iso(created + timedelta(hours=1)) if status != "OPEN" else None,
            "_lineItems": line_items,
            "_metafields": self._metafields(rng, created, updated),
        }
