"""Alerts for rollouts: events, where they go (webhooks in generic, Slack and WeCom formats; SMTP), and a dispatcher.

Why a package of small modules: rendering a payload, the transport, and the retry policy change for
different reasons, and the dispatcher is the only part the reconciler calls. It never raises, so a
dead alert channel can never block a rollback.
"""

from control_plane.alerts.channels import AlertSettings, EmailChannel, WebhookChannel
from control_plane.alerts.dispatch import dispatch
from control_plane.alerts.events import AlertEvent, Delivery
from control_plane.alerts.webhook import render_webhook

__all__ = [
    "AlertEvent",
    "AlertSettings",
    "Delivery",
    "EmailChannel",
    "WebhookChannel",
    "dispatch",
    "render_webhook",
]
