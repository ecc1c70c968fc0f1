"""HTTP response headers every client of a provider reads the same way."""

from __future__ import annotations

import contextlib
import time
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (never negative): delay-seconds or an HTTP-date (RFC
    9110 section 10.2.3). None when there is no header or it is neither. A date counts from ``now`` (epoch)."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):  # Not delay-seconds: try an HTTP date.
        return max(0.0, float(value))
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError):
        return None
