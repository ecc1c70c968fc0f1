"""The base stream for Stripe's list endpoints: bearer auth, ``starting_after`` pagination, ``created`` windows.

Stripe lists are newest first and cannot be sorted or filtered on update time. To make a sync resumable anyway, a
stream walks ascending windows of ``created`` (``created[gte]``/``created[lt]``), pages through each window newest
first, and checkpoints the bookmark when the window is complete: a crash or a ``max_runtime_seconds`` stop resumes
from the last complete window, never leaving a gap. Changes to existing objects do not move ``created``; the
``events`` stream (Stripe keeps 30 days of events) carries them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import requests
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.helpers.types import Context
from singer_sdk.pagination import BaseAPIPaginator
from singer_sdk.schema.source import SchemaDirectory, StreamSchema

from plugins.connectors.tap_runtime import CdpRESTStream
from plugins.core.errors import ConfigError

PAGE_SIZE = 100  # Stripe's maximum for list endpoints.
DEFAULT_START = "2011-01-01T00:00:00Z"  # Before Stripe's public launch: nothing in any account is older.
DAY = 86_400
MAX_WINDOW_SECONDS = 365 * DAY  # Empty windows double up to a year, so a young account costs few requests.


class StripeListPaginator(BaseAPIPaginator[str | None]):
    """Stripe list pagination: while ``has_more``, the next page starts after the last object's id."""

    def __init__(self) -> None:
        super().__init__(None)

    def has_more(self, response: requests.Response) -> bool:
        return bool(response.json().get("has_more"))

    def get_next(self, response: requests.Response) -> str | None:
        data = response.json().get("data") or []
        return str(data[-1]["id"]) if data else None


def _unix(setting: str, value: str) -> int:
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise ConfigError(setting, f"'{value}' is not an ISO-8601 date-time like 2024-01-01T00:00:00Z") from None


class StripeStream(CdpRESTStream[str | None]):
    """A Stripe list endpoint (``GET /v1/<objects>``), synced in ascending ``created`` windows."""

    schema = StreamSchema(SchemaDirectory(Path(__file__).parent / "schemas"))  # schemas/<stream name>.json
    records_jsonpath = "$.data[*]"
    primary_keys = ("id",)
    replication_key = "created"
    # Stripe sorts newest first, so records are not ascending; windows + checkpoint() make the stream resumable.
    is_sorted = False
    #: Extra list parameters this endpoint needs (e.g. ``status=all`` to include canceled subscriptions).
    list_params: ClassVar[dict[str, str]] = {}
    #: How far back the API can list (events: 30 days); None for no limit.
    retention_seconds: ClassVar[int | None] = None

    current_window: dict[str, int] | None = None

    @property
    def url_base(self) -> str:
        return str(self.config.get("api_url", "https://api.stripe.com")).rstrip("/")

    @property
    def authenticator(self) -> BearerTokenAuthenticator:
        return BearerTokenAuthenticator(token=self.config["api_key"])

    @property
    def http_headers(self) -> dict[str, str]:
        headers = {"User-Agent": "cdp-tap-stripe/0.2"}
        if self.config.get("api_version"):
            headers["Stripe-Version"] = str(self.config["api_version"])
        return headers

    def get_new_paginator(self) -> StripeListPaginator:
        return StripeListPaginator()

    @property
    def window_seconds(self) -> int:
        days = self.config.get("window_days", 30)
        if not isinstance(days, int | float) or days <= 0:
            raise ConfigError("window_days", f"'{days}' must be a positive number of days")
        return max(int(days * DAY), 1)

    def created_lower_bound(self, context: Context | None, now: int) -> int:
        """Where to start: the bookmark, else ``start_date``, else 2011; never before the API's retention."""
        bookmark = self.get_starting_replication_key_value(context)
        if isinstance(bookmark, int | float):
            lower = int(bookmark)
        else:
            lower = _unix("start_date", str(self.config.get("start_date") or DEFAULT_START))
        if self.retention_seconds is not None:
            lower = max(lower, now - self.retention_seconds + 60)
        return lower

    def request_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """Every object created since the bookmark, window by window, checkpointing after each complete window."""
        now = int(time.time())
        lower = self.created_lower_bound(context, now)
        # Progress within a window is not a bookmark (newest first); checkpoint() moves the bookmark per window.
        self.get_context_state(context).setdefault("progress_markers", {"Note": "Bookmark checkpointed per window."})
        size = self.window_seconds
        while lower <= now:
            upper = min(lower + size, now + 1)
            self.current_window = {"created[gte]": lower, "created[lt]": upper}
            seen = 0
            for record in super().request_records(context):
                seen += 1
                yield record
            if upper <= now:
                # Everything created before ``upper`` is extracted. The last window is not checkpointed: its objects
                # set the bookmark when the stream completes, so objects created while we page are never skipped.
                self.checkpoint(upper - 1, context)
            size = self.window_seconds if seen else min(size * 2, MAX_WINDOW_SECONDS)
            lower = upper
        self.current_window = None

    def get_url_params(self, context: Mapping[str, Any] | None, next_page_token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": PAGE_SIZE, **self.list_params}
        if next_page_token:
            params["starting_after"] = next_page_token
        if self.current_window:
            params.update(self.current_window)
        return params
