"""Alert delivery: the built-in log sink, a Slack-compatible incoming-webhook sink, and ``raise_alert`` which hands an
alert to every registered sink.

The webhook sink is registered when ``CDP_SLACK_WEBHOOK_URL`` is set; a writer with its own webhook setting passes a
``SlackWebhookAlertSink`` to ``raise_alert(..., extra_sinks=...)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import pluggy

from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.core.redaction import redact_text
from plugins.descriptors import Alert, AlertSink, Severity
from plugins.hookspecs import hookimpl

_LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.ERROR: logging.ERROR}
logger = logging.getLogger("cdp.alerts")


class LogAlertSink:
    """Writes every alert to the ``cdp.alerts`` logger as a structured event."""

    name = "log"

    def send(self, alert: Alert) -> None:
        log_event(
            logger,
            f"alert.{alert.kind}",
            _LEVELS[alert.severity],
            severity=alert.severity.value,
            message=alert.message,
            tenant=alert.tenant,
            provider=alert.provider,
            stream=alert.stream,
            details=alert.details,  # nested, so a detail can never collide with the fields above
        )


SLACK_WEBHOOK_ENV_VAR = "CDP_SLACK_WEBHOOK_URL"
_SEVERITY_MARKS = {
    Severity.INFO: ":information_source:",
    Severity.WARNING: ":warning:",
    Severity.ERROR: ":rotating_light:",
}


class SlackWebhookAlertSink:
    """Posts each alert to a Slack-compatible incoming webhook as ``{"text": ...}``; failures are logged, never raised.

    The text names the alert, its scope and its details; alerts never carry record contents or secrets, and the
    webhook URL (itself a secret) is never logged.
    """

    name = "slack-webhook"

    def __init__(self, url: str, *, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds

    @classmethod
    def from_env(cls) -> SlackWebhookAlertSink | None:
        """The sink for ``CDP_SLACK_WEBHOOK_URL``, or None when it is not set."""
        url = os.environ.get(SLACK_WEBHOOK_ENV_VAR, "").strip()
        return cls(url) if url else None

    @staticmethod
    def text(alert: Alert) -> str:
        """The message as posted: severity, kind, message, scope, details."""
        scope = "/".join(part for part in (alert.tenant, alert.provider, alert.stream) if part)
        lines = [f"{_SEVERITY_MARKS[alert.severity]} *{alert.kind}* ({alert.severity.value}): {alert.message}"]
        if scope:
            lines.append(f"scope: `{scope}`")
        lines.extend(f"{key}: {value}" for key, value in alert.details.items())
        return "\n".join(lines)

    def send(self, alert: Alert) -> None:
        import httpx  # Imported here: only a Slack delivery needs it, and every CLI start would pay for it.

        try:
            response = httpx.post(self.url, json={"text": self.text(alert)}, timeout=self.timeout_seconds)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            log_event(
                logger,
                "alert_delivery_failed",
                logging.WARNING,
                sink=self.name,
                kind=alert.kind,
                status=status,
                error=type(exc).__name__,
            )


@hookimpl
def cdp_alert_sinks() -> list[AlertSink]:
    sinks: list[AlertSink] = [LogAlertSink()]
    webhook = SlackWebhookAlertSink.from_env()
    if webhook is not None:
        sinks.append(webhook)
    return sinks


def _redacted(alert: Alert) -> Alert:
    """``alert`` with credentials taken out of its message and text details, whoever built it."""
    details = {key: redact_text(value) if isinstance(value, str) else value for key, value in alert.details.items()}
    return dataclasses.replace(alert, message=redact_text(alert.message), details=details)


def raise_alert(alert: Alert, pm: pluggy.PluginManager | None = None, *, extra_sinks: Sequence[AlertSink] = ()) -> None:
    """Deliver ``alert`` to every registered sink and to ``extra_sinks``; a failing sink never stops the others.

    Credentials in the message or in text details are redacted first (``plugins.core.redaction``).

    An extra webhook sink whose URL a registered one already posts to is skipped (no duplicate messages). When the
    registered sinks cannot be loaded (a plugin fails to import or its hook raises), the built-in sinks get the alert.
    """
    from plugins.manager import alert_sinks

    alert = _redacted(alert)
    try:
        sinks = list(alert_sinks(pm))
    except CdpError as exc:  # A broken plugin must neither lose the alert nor stop the pipeline that raised it.
        log_event(logger, "alert_sinks_unavailable", logging.ERROR, error=redact_text(str(exc)))
        sinks = cdp_alert_sinks()
    urls = {getattr(sink, "url", None) for sink in sinks} - {None}
    sinks.extend(sink for sink in extra_sinks if getattr(sink, "url", None) not in urls)
    for sink in sinks:
        try:
            sink.send(alert)
        except Exception:  # A broken sink must not break the pipeline that raised the alert.
            logger.exception("alert sink '%s' failed to deliver a %s alert", sink.name, alert.kind)
