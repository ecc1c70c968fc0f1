"""Retry-After is read one way everywhere (plugins.core.http_headers): delay-seconds and HTTP-dates (RFC 9110)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from activators.facebook.sender import error_for
from plugins.core.http_headers import retry_after_seconds
from plugins.descriptors import RetryableSendError
from tests.plugin_examples.http_audience import _retry_after

NOW = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),  # never negative
        ("Mon, 30 Nov 2026 09:00:45 GMT", 45.0),  # an HTTP-date, 45 s after NOW
        ("Mon, 30 Nov 2026 08:59:00 GMT", 0.0),  # a date already past: no wait
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_delay_seconds_and_http_dates(header: str | None, wait: float | None) -> None:
    assert retry_after_seconds(header, now=NOW.timestamp()) == wait


def _in(seconds: int) -> str:
    """An HTTP-date ``seconds`` from now, as a provider would send it."""
    return format_datetime(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds), usegmt=True)


def test_destinations_honour_an_http_date_retry_after() -> None:
    """The Facebook sender and the example destination used to read delay-seconds only: a date meant no wait."""
    request = httpx.Request("POST", "http://127.0.0.1/v1/aud/users")
    answer = httpx.Response(503, headers={"Retry-After": _in(90)}, json={"error": {"message": "down"}}, request=request)
    error = error_for(answer)
    assert isinstance(error, RetryableSendError)
    assert error.retry_after is not None
    assert 80 <= error.retry_after <= 90
    wait = _retry_after(answer)
    assert wait is not None
    assert 80 <= wait <= 90
