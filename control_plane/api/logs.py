"""shepherd's log lines, as text for people or one JSON object per line for a log pipeline, secrets masked.

    configure_logging("json")               # or SHEPHERD_LOG_FORMAT=json; `--log-format` on `shepherd serve`
    add_secret(settings.triton_api_key)     # a value that must never be printed, whatever logs it

Every line goes through `mask`, whichever format: shepherd API tokens (`shp_...`), whatever follows
`Bearer `, the password of any URL (`scheme://user:PASSWORD@host`), and each value registered
with `add_secret` (the Triton key, the database password) become `***`. The code takes care not to
log secrets in the first place; this is the net under it (an exception text quoting a URL, say).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from control_plane.errors import ConfigError

if TYPE_CHECKING:
    from control_plane.settings import Settings

FORMATS = ("text", "json")
FORMAT_ENV = "SHEPHERD_LOG_FORMAT"
MASK = "***"
PATTERNS = (
    (re.compile(r"shp_[A-Za-z0-9_-]+"), MASK),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"), r"\1" + MASK),
    (re.compile(r"(://[^/\s:@]*:)[^@\s/]+(@)"), r"\1" + MASK + r"\2"),
)
MIN_SECRET = 6  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in a log line from now on (None and short values are ignored)."""
    if value and len(value) >= MIN_SECRET:
        with _lock:
            _secrets.add(value)


def mask(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = mask(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def log_format(given: str | None) -> str:
    """`given`, else SHEPHERD_LOG_FORMAT, else text; anything else is a ConfigError."""
    chosen = (given or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    if chosen not in FORMATS:
        raise ConfigError(f"log format {chosen!r}: one of {', '.join(FORMATS)} (--log-format or {FORMAT_ENV})")
    return chosen


def configure_logging(given: str | None = None, *, verbose: bool = False) -> str:
    """Send every log line (shepherd's, uvicorn's, APScheduler's) to stderr in one format; returns it."""
    chosen = log_format(given)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return chosen


def protect(settings: Settings) -> None:
    """Mask every secret the settings hold: the Triton key, passwords of the database and of email, webhook URLs."""
    add_secret(settings.triton_api_key)
    with contextlib.suppress(ArgumentError, ValueError):
        add_secret(make_url(settings.db_url).password)  # type: ignore[arg-type]
    for hook in settings.alerts.webhooks:
        add_secret(hook.url)  # a Slack or WeCom webhook's path is itself the credential
    if settings.alerts.email is not None:
        add_secret(settings.alerts.email.password)
