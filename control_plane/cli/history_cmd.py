"""`shepherd status` and `shepherd history`: read the SQL history, as tables for people or JSON for scripts.

Both only read. A SQLite file that does not exist is an error rather than a new empty database, so a
mistyped `--db` does not print an empty history that looks like "nothing ever happened". The database
is the one `shepherd run` writes: `--db`, else SHEPHERD_DB, else `db_url` of shepherd.yaml (`--config`,
SHEPHERD_CONFIG or ./shepherd.yaml), else the default.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from control_plane.cli.output import console, print_json, print_table
from control_plane.errors import StoreError
from control_plane.settings import load_settings
from control_plane.store.database import DEFAULT_URL, mask_url, parse_url
from control_plane.store.store import Store

Db = Annotated[
    str | None,
    typer.Option("--db", envvar="SHEPHERD_DB", help=f"SQLAlchemy URL of the history (default: {DEFAULT_URL})."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Config = Annotated[
    Path | None,
    typer.Option("--config", help="shepherd.yaml whose db_url to read (default: SHEPHERD_CONFIG or ./shepherd.yaml)."),
]
Model = Annotated[str | None, typer.Option("--model", help="Only this model.")]
Since = Annotated[
    str | None,
    typer.Option("--since", help="Only versions whose state changed since: 30m, 12h, 7d, 2w, or a date (2026-11-01)."),
]

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`7d`-style ages and ISO dates or datetimes (naive ones read as UTC) to an aware UTC datetime."""
    now = now or datetime.now(UTC)
    age = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if age:
        return now - timedelta(**{UNITS[age.group(2)]: int(age.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an age (30m, 12h, 7d, 2w) nor a date (2026-11-01)", param_hint="--since"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def history_url(db: str | None, config: Path | None = None) -> str:
    """`--db` (or SHEPHERD_DB), else the settings' db_url (shepherd.yaml), else the default."""
    return db or load_settings(config).db_url


def open_store(db: str | None, config: Path | None = None) -> Store:
    """Open the history for reading, writing nothing (no migration): a read-only database or replica works.

    A missing SQLite file is a StoreError, not a new empty database.
    """
    url = history_url(db, config)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = parsed.database
        if parsed.query.get("uri") == "true":
            path = path.removeprefix("file:")  # SQLite URI form, e.g. file:/srv/history.db?mode=ro&uri=true
        if not os.path.exists(path):
            raise StoreError(
                f"no history database at {os.path.abspath(path)} (run `shepherd tick` or `shepherd run` first, "
                "or pass --db / SHEPHERD_DB)"
            )
    return Store.open(url, migrate=False)


def _short(value: str | None) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS` (UTC), for tables."""
    return value[:19].replace("T", " ") if value else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def status(db: Db = None, config: Config = None, as_json: Json = False) -> None:
    """Per model: the stable version, the candidate in flight, its phase and rollout (the console's /console/rollouts/ID)."""
    store = open_store(db, config)
    try:
        models = store.read.status()
    finally:
        store.close()
    if as_json:
        print_json(models)
        return
    if not models:
        console.print(f"no models recorded yet in {mask_url(history_url(db, config))}")
        return
    print_table(
        "shepherd status",
        ["model", "kind", "stable", "candidate", "phase", "since (UTC)", "pinned", "rollout"],
        [
            (
                m["model"],
                m["kind"],
                m["stable"],
                m["candidate"],
                m["phase"],
                _short(m["phase_since"]),
                f"v{m['pinned']} (automation paused)" if m["pinned"] is not None else "",
                m["rollout_id"],
            )
            for m in models
        ],
    )


def history(
    db: Db = None, config: Config = None, model: Model = None, since: Since = None, as_json: Json = False
) -> None:
    """Every version with its state, quality, time in canary and last decision."""
    after = parse_since(since) if since else None
    store = open_store(db, config)
    try:
        versions = store.read.history(model=model, since=after)
    finally:
        store.close()
    if as_json:
        print_json(versions)
        return
    print_table(
        "shepherd history",
        ["model", "version", "state", "stable", "quality", "discovered (UTC)", "changed (UTC)", "canary", "reason"],
        [_history_row(v) for v in versions],
    )


def _history_row(v: dict[str, Any]) -> tuple[Any, ...]:
    quality = f"{v['quality_metric']} {v['quality_value']:.4g}" if v["quality_value"] is not None else ""
    decision = v["last_decision"]
    reason = v["reason"] or ""
    if decision is not None and decision["reason"] and decision["reason"] not in reason:
        reason = f"{reason} [last decision: {decision['outcome']}: {decision['reason']}]".strip()
    return (
        v["model"],
        v["version"],
        v["state"],
        "*" if v["is_stable"] else "",
        quality,
        _short(v["discovered_at"]),
        _short(v["state_changed_at"]),
        _duration(v["time_in_canary_s"]),
        reason,
    )
