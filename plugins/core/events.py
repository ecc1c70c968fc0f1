"""Structured log events: a stable event name plus fields, never secrets or record contents."""

from __future__ import annotations

import logging
from typing import Any

import orjson


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as one line: ``event {"field": ...}``; fields also go to ``record.cdp``."""
    if not logger.isEnabledFor(level):
        return
    rendered = orjson.dumps(fields, default=str).decode() if fields else ""
    logger.log(level, "%s %s", event, rendered, extra={"cdp_event": event, "cdp": fields})
