"""Where alerts go and how hard to try: the `alerts:` section of shepherd.yaml as values.

Why channel names: a delivery is recorded under its channel's name, and a webhook URL often holds a
secret (Slack, WeCom keys), so the default name shows only the format and the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from control_plane.errors import ConfigError

WEBHOOK_FORMATS = ("generic", "slack", "wecom")


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    format: str = "generic"
    name: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"webhook url must be http(s)://host/..., got {redact_url(self.url)!r}")
        if self.format not in WEBHOOK_FORMATS:
            raise ConfigError(f"webhook format {self.format!r} is not one of {', '.join(WEBHOOK_FORMATS)}")

    @property
    def label(self) -> str:
        return self.name or f"webhook:{self.format}:{public_host(self.url)}"


@dataclass(frozen=True)
class EmailChannel:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = False
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("email host is empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"email port must be 1-65535, got {self.port!r}")
        if "@" not in self.sender:
            raise ConfigError(f"email sender {self.sender!r} is not an address")
        if not self.recipients or any("@" not in r for r in self.recipients):
            raise ConfigError(f"email recipients must be one or more addresses, got {list(self.recipients)!r}")

    @property
    def label(self) -> str:
        return f"email:{self.host}:{self.port}"


@dataclass(frozen=True)
class AlertSettings:
    """Channels and the retry budget. Worst case per channel: (1 + retries) attempts of `timeout_seconds`
    plus the backoffs in between, and never more than `deadline_seconds` in all."""

    webhooks: tuple[WebhookChannel, ...] = ()
    email: EmailChannel | None = None
    retries: int = 3
    backoff_seconds: float = 0.5
    timeout_seconds: float = 5.0
    deadline_seconds: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, got {self.retries!r}")
        for name in ("backoff_seconds", "timeout_seconds", "deadline_seconds"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or (name != "backoff_seconds" and value == 0):
                raise ConfigError(f"{name} must be a finite number {'>= 0' if name == 'backoff_seconds' else '> 0'}")

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks) or self.email is not None


def public_host(url: str) -> str:
    """`host[:port]` of `url`, without the `user:password@` a webhook URL may carry."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: show none rather than fail while reporting
        port = None
    return f"{host}:{port}" if port is not None else host


def redact_url(url: str) -> str:
    """scheme://host/… : enough to tell channels apart in logs, without the secrets in user info, path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{public_host(url)}/…" if parts.netloc else "…"


def redact(text: str, url: str) -> str:
    """`text` with every occurrence of `url`'s secrets replaced (requests puts them in its errors).

    The secrets are the user info (`user:password@`), the path and the query.
    """
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    secrets = (
        url,
        userinfo,
        parts.password,
        parts.path + ("?" + parts.query if parts.query else ""),
        parts.path,
        parts.query,
    )
    for secret in secrets:
        if secret and secret != "/":
            text = text.replace(secret, "…")
    return text
