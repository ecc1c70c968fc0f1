"""One redaction module: the same vocabulary hides secrets in tap requests, DLQ views and alerts."""

from __future__ import annotations

import pytest

from plugins.alerts import raise_alert
from plugins.core.redaction import (
    MASK,
    REDACTED,
    RecordMasker,
    is_secret_name,
    redact_headers,
    redact_params,
    redact_text,
    redact_url,
)
from plugins.descriptors import Alert, Severity
from plugins.manager import create_plugin_manager

SECRET_NAMED = ["X-Api-Key", "X-Auth", "Authorization", "client_secret", "refresh_token", "db_password", "access_key"]
ORDINARY = ["email_count", "limit", "starting_after", "Accept", "keyword", "monkey"]


@pytest.mark.parametrize("name", SECRET_NAMED)
def test_a_secret_name_is_hidden_everywhere_the_same_way(name: str) -> None:
    assert is_secret_name(name)
    assert redact_headers({name: "v4lue"}) == {name: REDACTED}
    assert redact_params({name: "v4lue"}) == {name: REDACTED}
    assert RecordMasker(use_defaults=False).mask({name: "v4lue"}) == {name: MASK}


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_are_kept(name: str) -> None:
    assert not is_secret_name(name)
    assert RecordMasker(use_defaults=False).mask({name: "v"}) == {name: "v"}


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("failed: Authorization: Bearer abc.def-123", "abc.def-123"),
        ("Basic dXNlcjpwYXNz was refused", "dXNlcjpwYXNz"),
        ("GET /x?refresh_token=r3fr3sh&a=1", "r3fr3sh"),
        ("key sk_live_51Habc123 rejected", "sk_live_51Habc123"),
        ("token shpat_0123456789abcdef expired", "shpat_0123456789abcdef"),
    ],
)
def test_credentials_in_text_are_redacted(text: str, secret: str) -> None:
    assert secret not in redact_text(text)
    assert REDACTED in redact_text(text)
    assert secret not in RecordMasker().mask({"note": text})["note"]


def test_alerts_reach_every_sink_without_credentials() -> None:
    delivered: list[Alert] = []

    class Recorder:
        name = "recorder"

        def send(self, alert: Alert) -> None:
            delivered.append(alert)

    alert = Alert(
        kind="extraction_failed",
        severity=Severity.ERROR,
        message="401 for https://api.example.com/v1?api_key=s3cr3t-value",
        details={"request": "Authorization: Bearer t0k3n", "attempts": 3},
    )
    raise_alert(alert, create_plugin_manager(only=[]), extra_sinks=[Recorder()])
    (sent,) = delivered
    assert "s3cr3t-value" not in sent.message
    assert "t0k3n" not in sent.details["request"]
    assert sent.details["attempts"] == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:////var/lib/cdp/catalog.db", "sqlite:////var/lib/cdp/catalog.db"),
        (
            "postgresql:///cdp?host=/run/postgresql&password=pw",
            f"postgresql:///cdp?host=/run/postgresql&password={REDACTED}",
        ),
        ("postgresql://cdp:pw@db:5432/cdp?sslmode=require", "postgresql://db:5432/cdp?sslmode=require"),
        (
            "https://api.example.com/v1/x?created%5Bgte%5D=1&q=a+b",
            "https://api.example.com/v1/x?created%5Bgte%5D=1&q=a+b",
        ),
    ],
)
def test_a_redacted_url_changes_nothing_but_its_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown
