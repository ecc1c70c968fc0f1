"""The base stream for Stripe's list endpoints: bearer auth, ``starting_after`` pagination, ``created`` filters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.pagination import BaseAPIPaginator
from singer_sdk.schema.source import SchemaDirectory, StreamSchema
from singer_sdk.streams import RESTStream

PAGE_SIZE = 100  # Stripe's maximum for list endpoints.


class StripeListPaginator(BaseAPIPaginator[str | None]):
    """Stripe list pagination: while ``has_more``, the next page starts after the last object's id."""

    def __init__(self) -> None:
        super().__init__(None)

    def has_more(self, response: requests.Response) -> bool:
        return bool(response.json().get("has_more"))

    def get_next(self, response: requests.Response) -> str | None:
        data = response.json().get("data") or []
        return str(data[-1]["id"]) if data else None


class StripeStream(RESTStream[str | None]):
    """A Stripe list endpoint (``GET /v1/<objects>``), newest first, filterable on ``created``."""

    schema = StreamSchema(SchemaDirectory(Path(__file__).parent / "schemas"))  # schemas/<stream name>.json
    records_jsonpath = "$.data[*]"
    replication_key = "created"
    # Stripe lists are newest first and cannot be sorted, so the bookmark is only final at the end of a sync.
    is_sorted = False

    @property
    def url_base(self) -> str:
        return str(self.config.get("api_url", "https://api.stripe.com")).rstrip("/")

    @property
    def authenticator(self) -> BearerTokenAuthenticator:
        return BearerTokenAuthenticator(token=self.config["api_key"])

    @property
    def http_headers(self) -> dict[str, str]:
        return {"User-Agent": "cdp-tap-stripe/0.1"}

    def get_new_paginator(self) -> StripeListPaginator:
        return StripeListPaginator()

    def created_lower_bound(self, context: Mapping[str, Any] | None) -> int | None:
        """The ``created`` value to start from: the bookmark, else ``start_date`` as a Unix timestamp."""
        bookmark = self.get_starting_replication_key_value(context)
        if isinstance(bookmark, int | float):
            return int(bookmark)
        start_date = self.config.get("start_date")
        if start_date:
            return int(datetime.fromisoformat(str(start_date).replace("Z", "+00:00")).timestamp())
        return None

    def get_url_params(self, context: Mapping[str, Any] | None, next_page_token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if next_page_token:
            params["starting_after"] = next_page_token
        lower_bound = self.created_lower_bound(context)
        if lower_bound is not None:
            params["created[gte]"] = lower_bound
        return params
