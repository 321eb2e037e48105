"""JSON webhooks: the generic event, Slack's Block Kit message, and a WeCom (企业微信) group robot's markdown.

Why three renderers and one sender: the transport and its failure rules are the same, only the body
differs. A WeCom robot answers HTTP 200 even when it refuses a message (`errcode` in the body), so
success is read from the body too.
"""

from __future__ import annotations

from typing import Any

import requests

from control_plane.alerts.channels import WEBHOOK_FORMATS, WebhookChannel, redact
from control_plane.alerts.events import AlertEvent, DeliveryFailed
from control_plane.errors import AlertError

SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000
WECOM_CONTENT_MAX_BYTES = 4096
WECOM_COLOURS = {"critical": "warning", "warning": "warning", "info": "info"}
WECOM_TEMPORARY_ERRCODES = frozenset({-1, 45009})  # system busy; over the robot's rate limit


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack(event: AlertEvent) -> dict[str, Any]:
    reason = _slack_escape(event.reason)
    fields = [
        ("Model", event.model),
        ("Version", str(event.version)),
        ("Severity", event.severity),
        ("At", event.at.isoformat(timespec="seconds")),
    ]
    blocks: list[dict[str, Any]] = []
    if event.link:
        link = f"<{_slack_escape(event.link)}|Open the evidence in shepherd>"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": link}})
    return {
        "text": _cut(f"{event.title}: {event.reason}", SLACK_TEXT_MAX),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(event.title, SLACK_HEADER_MAX)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"*Reason:* {reason}", SLACK_TEXT_MAX)}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"} for name, value in fields],
            },
            *blocks,
        ],
    }


def _wecom(event: AlertEvent) -> dict[str, Any]:
    colour = WECOM_COLOURS[event.severity]
    content = (
        f"## {event.title}\n"
        f'> severity: <font color="{colour}">{event.severity}</font>\n'
        f"> model: {event.model}\n"
        f"> version: {event.version}\n"
        f"> at: {event.at.isoformat(timespec='seconds')}\n\n"
        f"**reason:** {event.reason}"
    )
    if event.link:
        content = f"{content}\n\n[open the evidence in shepherd]({event.link})"
    raw = content.encode("utf-8")
    if len(raw) > WECOM_CONTENT_MAX_BYTES:
        content = raw[: WECOM_CONTENT_MAX_BYTES - 3].decode("utf-8", errors="ignore") + "…"
    return {"msgtype": "markdown", "markdown": {"content": content}}


def render_webhook(event: AlertEvent, format: str) -> dict[str, Any]:
    """The JSON body for one webhook `format`: 'generic' (the event itself), 'slack' or 'wecom'."""
    if format == "generic":
        return event.as_dict()
    if format == "slack":
        return _slack(event)
    if format == "wecom":
        return _wecom(event)
    raise AlertError(f"webhook format {format!r} is not one of {', '.join(WEBHOOK_FORMATS)}")


def send_webhook(channel: WebhookChannel, event: AlertEvent, *, timeout_seconds: float) -> None:
    """POST the rendered event once; raise DeliveryFailed (temporary or not) unless the receiver took it."""
    body = render_webhook(event, channel.format)
    try:
        response = requests.post(channel.url, json=body, timeout=timeout_seconds)
    except requests.RequestException as exc:
        raise DeliveryFailed(redact(f"{type(exc).__name__}: {exc}", channel.url), temporary=True) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise DeliveryFailed(f"HTTP {response.status_code}", temporary=True)
    if response.status_code >= 300:
        raise DeliveryFailed(f"HTTP {response.status_code}: {response.text[:200]}", temporary=False)
    if channel.format == "wecom":
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        code = answer.get("errcode", 0) if isinstance(answer, dict) else 0
        if code:
            message = f"WeCom errcode {code}: {answer.get('errmsg', '')}"
            raise DeliveryFailed(message, temporary=code in WECOM_TEMPORARY_ERRCODES)
