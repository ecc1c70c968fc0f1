"""Alert delivery: the built-in log sink, and ``raise_alert`` which hands an alert to every registered sink."""

from __future__ import annotations

import logging

import pluggy

from plugins.descriptors import Alert, AlertSink, Severity
from plugins.events import log_event
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
            **alert.details,
        )


@hookimpl
def cdp_alert_sinks() -> list[AlertSink]:
    return [LogAlertSink()]


def raise_alert(alert: Alert, pm: pluggy.PluginManager | None = None) -> None:
    """Deliver ``alert`` to every registered sink; a failing sink is logged and never stops the others."""
    from plugins.manager import alert_sinks

    for sink in alert_sinks(pm):
        try:
            sink.send(alert)
        except Exception:  # A broken sink must not break the pipeline that raised the alert.
            logger.exception("alert sink '%s' failed to deliver a %s alert", sink.name, alert.kind)
