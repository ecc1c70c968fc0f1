"""tap-salesforce: settings, OAuth, and one stream per configured sObject discovered through ``describe``."""

from __future__ import annotations

from functools import cached_property
from http import HTTPStatus
from typing import Any

from singer_sdk import Stream
from singer_sdk import typing as th
from singer_sdk.authenticators import BearerTokenAuthenticator

from plugins.connectors.tap_runtime import COMMON_TAP_SETTINGS, HTTP_URL_PATTERN, CdpTap, ExtractionFailure
from plugins.core.errors import CdpError, ConfigError
from taps.salesforce.client import DiscoveryRequests, SalesforceAuthenticator, SalesforceOAuthAuthenticator
from taps.salesforce.streams import DEFAULT_OBJECTS, SObjectStream

DEFAULT_TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"  # noqa: S105  # a URL, not a secret
DEFAULT_API_VERSION = "62.0"
API_VERSION_PATTERN = r"^v?(4[7-9]|[5-9]\d|[1-9]\d{2})\.0(?!\n)$"  # 47.0 or later: Bulk API 2.0 query jobs
SOBJECT_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*(?!\n)$"  # API names: letters, digits, underscores (Invoice__c)


class DiscoveryError(CdpError):
    """An sObject's ``describe`` failed, so its schema (and stream) cannot be built."""


class TapSalesforce(CdpTap):
    """Singer tap for Salesforce: any sObject, REST query or Bulk API 2.0, incremental on ``SystemModstamp``."""

    name = "tap-salesforce"

    config_jsonschema = th.PropertiesList(
        th.Property(
            "instance_url",
            th.StringType(pattern=HTTP_URL_PATTERN),
            title="Instance URL",
            description=(
                "Base URL of the org (https://MyDomain.my.salesforce.com) or of a local sandbox. Required with "
                "access_token; with the refresh-token flow, default: the instance_url the token endpoint returns."
            ),
        ),
        th.Property(
            "client_id",
            th.StringType,
            title="Client ID",
            description="Consumer key of the connected app (refresh-token flow).",
        ),
        th.Property(
            "client_secret",
            th.StringType,
            secret=True,
            title="Client secret",
            description="Consumer secret of the connected app (refresh-token flow).",
        ),
        th.Property(
            "refresh_token",
            th.StringType,
            secret=True,
            title="Refresh token",
            description="OAuth refresh token of the integration user; exchanged for access tokens as needed.",
        ),
        th.Property(
            "token_url",
            th.StringType(pattern=HTTP_URL_PATTERN),
            default=DEFAULT_TOKEN_URL,
            title="Token URL",
            description=(
                "OAuth token endpoint: https://login.salesforce.com/services/oauth2/token, "
                "https://test.salesforce.com/... for sandboxes, or the My Domain URL."
            ),
        ),
        th.Property(
            "access_token",
            th.StringType,
            secret=True,
            title="Access token",
            description="A session or access token to use instead of the refresh-token flow (it cannot be renewed).",
        ),
        th.Property(
            "api_version",
            th.StringType(pattern=API_VERSION_PATTERN),
            default=DEFAULT_API_VERSION,
            title="API version",
            description="Salesforce API version, e.g. 62.0 (Bulk API 2.0 query needs 47.0 or later).",
        ),
        th.Property(
            "objects",
            th.ArrayType(th.StringType(pattern=SOBJECT_NAME_PATTERN)),
            default=DEFAULT_OBJECTS,
            title="Objects",
            description="sObjects to extract, standard or custom (Invoice__c); each becomes a stream.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description="On the first run, extract rows whose SystemModstamp is at or after this instant (ISO-8601).",
        ),
        th.Property(
            "query_all",
            th.BooleanType,
            default=False,
            title="Include deleted rows",
            description="Use queryAll, so deleted and archived rows (IsDeleted = true) are extracted too.",
        ),
        th.Property(
            "bulk_threshold",
            th.IntegerType(minimum=0),
            default=50_000,
            title="Bulk API threshold",
            description="Use a Bulk API 2.0 query job when a sync has more rows than this (from a COUNT() query).",
        ),
        th.Property(
            "page_size",
            th.IntegerType(minimum=200, maximum=2000),
            default=2000,
            title="REST batch size",
            description="Rows per REST query batch asked with Sforce-Query-Options (200 to 2000).",
        ),
        th.Property(
            "bulk_window_days",
            th.NumberType(minimum=0),
            default=90,
            title="Bulk window (days)",
            description=(
                "Split a Bulk API 2.0 sync into one job per this many days of SystemModstamp, each checkpointed, so "
                "a stopped or crashed full load resumes from the last complete window; 0: one job."
            ),
        ),
        th.Property(
            "bulk_max_records",
            th.IntegerType(minimum=1),
            default=50_000,
            title="Bulk result set size",
            description="maxRecords per Bulk API 2.0 result set.",
        ),
        th.Property(
            "bulk_poll_interval_seconds",
            th.NumberType(exclusive_minimum=0),
            default=5,
            title="Bulk poll interval (seconds)",
            description="Wait between polls of a Bulk API 2.0 query job.",
        ),
        th.Property(
            "bulk_timeout_seconds",
            th.NumberType(exclusive_minimum=0),
            default=3600,
            title="Bulk job timeout (seconds)",
            description="Give up on a Bulk API 2.0 query job (DLQ, stream skipped) after this long.",
        ),
        th.Property(
            "max_api_usage_percent",
            th.NumberType(exclusive_minimum=0, maximum=100),
            default=80,
            title="Maximum API usage (%)",
            description=(
                "Stop extracting once the org's daily API usage (Sforce-Limit-Info) passes this share, leaving the "
                "rest to other integrations."
            ),
        ),
        th.Property(
            "request_timeout_seconds",
            th.NumberType(exclusive_minimum=0),
            default=120,
            title="Request timeout (seconds)",
            description="Timeout of one HTTP request; timed-out requests are retried.",
        ),
        *COMMON_TAP_SETTINGS,
    ).to_dict()

    # -- credentials ---------------------------------------------------------------------------------------------

    def _require(self, *names: str, because: str) -> None:
        for name in names:
            if not self.config.get(name):
                raise ConfigError(name, f"is required {because}")

    @cached_property
    def authenticator(self) -> SalesforceAuthenticator:
        """One authenticator for every stream, so a refreshed token serves them all."""
        if self.config.get("access_token"):
            self._require("instance_url", because="with access_token (the token does not say which org it is for)")
            return BearerTokenAuthenticator(token=str(self.config["access_token"]))
        self._require(
            "client_id", "client_secret", "refresh_token", because="unless access_token is set (refresh-token flow)"
        )
        return SalesforceOAuthAuthenticator(
            token_url=str(self.config.get("token_url") or DEFAULT_TOKEN_URL),
            client_id=str(self.config["client_id"]),
            client_secret=str(self.config["client_secret"]),
            refresh_token=str(self.config["refresh_token"]),
        )

    @property
    def instance_url(self) -> str:
        configured = self.config.get("instance_url")
        if configured:
            return str(configured).rstrip("/")
        authenticator = self.authenticator
        if isinstance(authenticator, SalesforceOAuthAuthenticator):
            if authenticator.instance_url is None:
                authenticator.update_access_token()
            if authenticator.instance_url:
                return authenticator.instance_url.rstrip("/")
        raise ConfigError("instance_url", "is not set and the token endpoint returned none")

    @property
    def data_url(self) -> str:
        version = str(self.config.get("api_version") or DEFAULT_API_VERSION).removeprefix("v")
        return f"{self.instance_url}/services/data/v{version}"

    # -- discovery -----------------------------------------------------------------------------------------------

    @cached_property
    def _discovery_requests(self) -> DiscoveryRequests:
        """Sends discovery's requests through the shared runtime: its retries, throttling and token refresh."""
        return DiscoveryRequests(self)

    def describe(self, sobject: str) -> dict[str, Any]:
        """``GET /sobjects/{sobject}/describe``; an sObject the org does not know is a setting error."""
        try:
            response = self._discovery_requests.send("GET", f"{self.data_url}/sobjects/{sobject}/describe")
        except ExtractionFailure as exc:
            if exc.status == HTTPStatus.NOT_FOUND or "NOT_FOUND" in str(exc):
                raise ConfigError("objects", f"'{sobject}' is not an sObject this org or user can describe") from None
            raise DiscoveryError(f"describe of {sobject} failed: {exc}") from None
        return dict(response.json())

    def discover_streams(self) -> list[Stream]:
        objects = self.config.get("objects") or DEFAULT_OBJECTS
        return [SObjectStream(self, self.describe(name)) for name in objects]


if __name__ == "__main__":
    TapSalesforce.cli()
