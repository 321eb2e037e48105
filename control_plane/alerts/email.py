"""Alerts by email over SMTP (plain, or STARTTLS with a login).

Why plain text: an alert is read on a phone at 3 am; the subject names the event, model and version,
and the body the reason and the figures behind the decision.
"""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from control_plane.alerts.channels import EmailChannel
from control_plane.alerts.events import AlertEvent, DeliveryFailed

PERMANENT_SMTP_CODES = range(500, 600)


def render_email(event: AlertEvent, channel: EmailChannel) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"{event.title}: {event.reason}"[:200]
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.recipients)
    message["Date"] = formatdate(event.at.timestamp(), localtime=False)
    message["Message-ID"] = make_msgid(domain=channel.sender.rsplit("@", 1)[-1])
    lines = [
        f"{event.event} of {event.model} version {event.version} ({event.severity})",
        f"at: {event.at.isoformat(timespec='seconds')}",
        "",
        f"reason: {event.reason}",
        *([f"evidence, plotted: {event.link}"] if event.link else []),
        "",
        "evidence:",
        json.dumps(event.as_dict()["evidence"], indent=2, sort_keys=True),
    ]
    message.set_content("\n".join(lines))
    return message


def send_email(channel: EmailChannel, event: AlertEvent, *, timeout_seconds: float) -> None:
    """Send once; raise DeliveryFailed (temporary unless the server refused with a 5xx code)."""
    message = render_email(event, channel)
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=timeout_seconds) as smtp:
            if channel.starttls:
                smtp.starttls()
            if channel.username:
                smtp.login(channel.username, channel.password or "")
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(
            f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", temporary=exc.smtp_code not in PERMANENT_SMTP_CODES
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryFailed(f"recipients refused: {sorted(exc.recipients)}", temporary=False) from exc
    except (smtplib.SMTPException, OSError) as exc:  # OSError covers refused connections and timeouts
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}", temporary=True) from exc
