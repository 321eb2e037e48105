"""What an alert says, and what became of sending it.

Why frozen values: the same event goes to every channel and is recorded in SQL with each delivery
result; nothing along the way may change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control_plane.errors import AlertError

EVENTS = ("rollback", "failure", "promotion", "rejection")
SEVERITIES = ("critical", "warning", "info")


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types: datetimes as ISO text, other objects as text, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)


@dataclass(frozen=True)
class AlertEvent:
    event: str
    model: str
    version: int
    reason: str
    at: datetime
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: str = "info"

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise AlertError(f"alert event {self.event!r} is not one of {', '.join(EVENTS)}")
        if self.severity not in SEVERITIES:
            raise AlertError(f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    @property
    def title(self) -> str:
        """One line, used as Slack header and email subject."""
        return f"[shepherd] {self.event}: {self.model} version {self.version}"

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON (the generic webhook body)."""
        return {
            "event": self.event,
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "severity": self.severity,
            "evidence": json_safe(self.evidence),
        }


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
