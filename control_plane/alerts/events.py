"""What an alert says, and what became of sending it.

Why frozen values: the same event goes to every channel and is recorded in SQL with each delivery
result; nothing along the way may change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control_plane.errors import AlertError
from control_plane.jsonsafe import plain_json

# The one list of lifecycle events that raise an alert, with how loud each is; the alerts table's
# CHECK constraint and the log level of `control_plane.events.announce` are built from it.
EVENT_SEVERITY = {"rollback": "critical", "failure": "critical", "rejection": "warning", "promotion": "info"}
ALERT_EVENTS = tuple(EVENT_SEVERITY)
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class AlertEvent:
    event: str
    model: str
    version: int
    reason: str
    at: datetime
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: str = "info"
    link: str | None = None  # the console page with the evidence (settings `public_url`), when one is set

    def __post_init__(self) -> None:
        if self.event not in ALERT_EVENTS:
            raise AlertError(f"alert event {self.event!r} is not one of {', '.join(ALERT_EVENTS)}")
        if self.severity not in SEVERITIES:
            raise AlertError(f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    @property
    def title(self) -> str:
        """One line, used as Slack header and email subject."""
        return f"[shepherd] {self.event}: {self.model} version {self.version}"

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON (the generic webhook body); `link` only when a public URL is set."""
        body = {
            "event": self.event,
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "severity": self.severity,
            "evidence": plain_json(self.evidence, where="evidence", default=str),
        }
        return body | ({"link": self.link} if self.link else {})


@dataclass(frozen=True)
class Delivery:
    """The result of sending one event to one channel (recorded by the reconciler)."""

    channel: str
    ok: bool
    attempts: int
    error: str | None = None


class DeliveryFailed(Exception):
    """One attempt to send failed; `temporary` says whether trying again can help (timeouts, 5xx, 429)."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary
