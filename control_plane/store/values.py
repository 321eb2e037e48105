"""Checking values on their way into the history, each refusal a StoreError naming the field.

Why at the boundary: a NaN, a naive datetime or a misspelt outcome caught here is a clear message
to the caller; caught by the database it is a driver error about a CHECK constraint, or worse, a
row that silently means something else on SQLite than on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from control_plane.errors import StoreError
from control_plane.jsonsafe import NotJSON, plain_json
from control_plane.store.models import State


def clean_json(value: Any, *, where: str) -> Any:
    """`value` as plain JSON (see control_plane.jsonsafe); what has no JSON form is a StoreError."""
    try:
        return plain_json(value, where=where)
    except NotJSON as exc:
        raise StoreError(str(exc)) from exc


def number(value: Any, *, where: str, integer: bool) -> float | int | None:
    cleaned = clean_json(value, where=where)
    if cleaned is None:
        return None
    if isinstance(cleaned, bool) or not isinstance(cleaned, int | float):
        raise StoreError(f"{where} must be a number, got {value!r:.80}")
    return round(cleaned) if integer else float(cleaned)


def aware(value: datetime, *, where: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StoreError(f"{where} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def one_of(value: str, allowed: Iterable[str], *, where: str) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise StoreError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def state(value: State | str) -> State:
    try:
        return State(value)
    except ValueError:
        raise StoreError(f"unknown state {value!r}; states are {', '.join(s.value for s in State)}") from None


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
