"""What `cdp demo` reads back and decides without running the pipeline: the unified-customer counts from the processed
zone's tables, and whether the transforms run inside `meltano run` (the cdp utility) or after it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from plugins.cli.demo_cmd import DemoError, has_transform_utility, read_unified_customers
from plugins.transforms.catalog import ProcessedZone


def _write(processed: Path, table: str, rows: pa.Table) -> None:
    catalog = ProcessedZone.resolve(processed_url=str(processed)).open()
    catalog.create_namespace_if_not_exists("demo")
    catalog.create_table(("demo", table), schema=rows.schema).append(rows)


def test_unified_customers_counts_profiles_records_and_those_spanning_providers(tmp_path: Path) -> None:
    processed = tmp_path / "processed"
    _write(processed, "customers", pa.table({"customer_id": ["cus_a", "cus_b", "cus_c"]}))
    _write(
        processed,
        "identity_map",
        pa.table(
            {
                # cus_a: Stripe and Shopify; cus_b: a Salesforce Contact and Lead (one provider); cus_c: one Stripe
                # record seen under two identifiers (two map rows) and in an event (activity, not a record).
                "source": [
                    "stripe/customers",
                    "shopify/customers",
                    "salesforce/Contact",
                    "salesforce/Lead",
                    "stripe/customers",
                    "stripe/customers",
                    "events",
                ],
                "record_id": [
                    "stripe:customer:1",
                    "shopify:customer:1",
                    "salesforce:contact:c1",
                    "salesforce:lead:l1",
                    "stripe:customer:2",
                    "stripe:customer:2",
                    "event:stripe_customer:2",
                ],
                "customer_id": ["cus_a", "cus_a", "cus_b", "cus_b", "cus_c", "cus_c", "cus_c"],
            }
        ),
    )
    unified = read_unified_customers(processed, "demo")
    assert (unified.customers, unified.records, unified.cross_provider) == (3, 5, 1)


def test_unified_customers_without_the_tables_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match=r"no unified customers: table 'demo\.customers' does not exist"):
        read_unified_customers(tmp_path / "processed", "demo")


@pytest.mark.parametrize(
    ("meltano_yml", "expected"),
    [
        ("plugins:\n  utilities:\n    - name: cdp\n      namespace: cdp\n", True),
        ("plugins:\n  utilities:\n    - name: sqlfluff\n", False),
        ("plugins:\n  extractors: []\n", False),
        ("", False),
    ],
)
def test_transforms_run_inside_meltano_only_where_the_cdp_utility_is_declared(
    tmp_path: Path, meltano_yml: str, expected: bool
) -> None:
    (tmp_path / "meltano.yml").write_text(meltano_yml, encoding="utf-8")
    assert has_transform_utility(tmp_path) is expected
