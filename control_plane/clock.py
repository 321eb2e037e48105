"""The control plane's one clock: aware UTC now.

Why one: the runtime, the store and the jobs must agree on what "now" is, and tests replace it with a
settable clock; a second `datetime.now()` somewhere would read real time behind the fake one's back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time the history stores)."""
    return datetime.now(UTC)
