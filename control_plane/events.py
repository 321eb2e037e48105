"""One funnel for every lifecycle event: a log line, a row per alert delivery, the alert itself.

Why one funnel: a rollback, a failure, a rejection or a promotion must be visible the same way
wherever it came from (the reconciler, the judge, a person). Alerts are sent after the Triton
action they report, so a slow or failing channel never delays taking a bad version down; failures
are retried by the dispatcher and recorded, never raised.
"""

from __future__ import annotations

import logging
from typing import Any

from control_plane.alerts.dispatch import dispatch
from control_plane.alerts.events import AlertEvent
from control_plane.runtime import Runtime

log = logging.getLogger("shepherd")

SEVERITY = {"rollback": "critical", "failure": "critical", "rejection": "warning", "promotion": "info"}


def announce(rt: Runtime, *, event: str, model: str, version: int, reason: str, evidence: dict[str, Any]) -> None:
    """Log the event and deliver it to every configured alert channel, recording each delivery."""
    severity = SEVERITY.get(event, "info")
    level = logging.WARNING if severity != "info" else logging.INFO
    log.log(level, "%s %s version %s: %s", event, model, version, reason)
    alert = AlertEvent(
        event=event, model=model, version=version, reason=reason, at=rt.now(), evidence=evidence, severity=severity
    )
    try:
        deliveries = dispatch(alert, rt.settings.alerts)
    except Exception:  # the dispatcher never raises by contract; this guards the rollback anyway
        log.exception("alert dispatch crashed for %s %s v%s", event, model, version)
        return
    for delivery in deliveries:
        try:
            alert_id = rt.store.add_alert(
                event=event,
                model=model,
                version=version,
                channel=delivery.channel,
                payload={"reason": reason, "severity": severity},
            )
            rt.store.update_alert(
                alert_id,
                status="sent" if delivery.ok else "failed",
                attempts=delivery.attempts,
                last_error=delivery.error,
            )
        except Exception:
            log.exception("could not record the %s alert delivery to %s", event, delivery.channel)
