"""A third-party-style plugin package used by the hook tests: one of each descriptor, with real implementations.

Registered by the tests through a plugin manager exactly as an entry point would register it. The implementations
live in submodules that the descriptors name by import path, so the tests can check they are imported only on use.
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.context import CdpContext
from plugins.descriptors import (
    ActivatorDescriptor,
    ChannelLimits,
    LoaderDescriptor,
    RawInput,
    TableInput,
    TransformDescriptor,
)

SEEN_CONTEXTS: list[CdpContext] = []


@hookimpl
def cdp_transforms(context: CdpContext) -> list[TransformDescriptor]:
    SEEN_CONTEXTS.append(context)
    functions = "tests.plugin_examples.transforms"
    # Named apart from the built-in transforms' tables (orders, customers...): two writers of one table are refused.
    return [
        # Listed out of order on purpose: the framework orders them by the tables they read.
        TransformDescriptor(
            name="customer_totals",
            inputs=[TableInput("shop_customers"), TableInput("shop_orders")],
            output="customer_totals",
            key=["customer_id"],
            function=f"{functions}:customer_totals",
        ),
        TransformDescriptor(
            name="shop_customers",
            inputs=[RawInput("acme", "contacts")],
            output="shop_customers",
            key=["customer_id"],
            function=f"{functions}:customers",
            partitioning=["bucket(16, customer_id)"],
        ),
        TransformDescriptor(
            name="shop_orders",
            inputs=[RawInput("acme", "orders")],
            output="shop_orders",
            key=["order_id"],
            function=f"{functions}:orders",
        ),
    ]


@hookimpl
def cdp_loaders() -> list[LoaderDescriptor]:
    return [
        LoaderDescriptor(
            name="sqlite",
            loader="tests.plugin_examples.sqlite_loader:SqliteLoader",
            description="Tables into a SQLite file, the loaded snapshot kept in the same transaction.",
            settings_schema={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        )
    ]


@hookimpl
def cdp_activators() -> list[ActivatorDescriptor]:
    return [
        ActivatorDescriptor(
            name="jsonl",
            sender="tests.plugin_examples.jsonl_sender:JsonlSender",
            limits=ChannelLimits(max_batch_size=2, requests_per_second=100.0),
            description="Audience members appended to a JSON Lines file.",
        ),
        ActivatorDescriptor(
            name="http-audience",
            sender="tests.plugin_examples.http_audience:HttpAudienceSender",
            limits=ChannelLimits(max_batch_size=1000, requests_per_second=1000.0),
            channel="email",
            description="An audience API over HTTP, with its sandbox (the delivery engine's tests).",
            settings_schema={
                "type": "object",
                "properties": {
                    "url": {"type": "string"},
                    "audience_id": {"type": "string"},
                    "token": {"type": "string", "secret": True},
                },
                "required": ["url", "audience_id", "token"],
            },
            sandbox="tests.plugin_examples.http_audience:create_sandbox",
        ),
    ]
