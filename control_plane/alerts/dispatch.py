"""Fan an alert out to every channel, retrying each with backoff; never raise, never take unbounded time.

Why threads and a deadline: the reconciler sends alerts after it has unloaded a bad version, and a
dead mail server must not hold up the next tick; channels are tried side by side, each stops
retrying when `deadline_seconds` would be passed, and every outcome comes back as a Delivery.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from control_plane.alerts.channels import AlertSettings, EmailChannel, WebhookChannel
from control_plane.alerts.email import send_email
from control_plane.alerts.events import AlertEvent, Delivery, DeliveryFailed
from control_plane.alerts.webhook import send_webhook

log = logging.getLogger("shepherd.alerts")

Sender = Callable[[float], None]  # one attempt, given its timeout in seconds


def _deliver(label: str, send: Sender, settings: AlertSettings, deadline: float) -> Delivery:
    attempts = 0
    error = "not attempted"
    while attempts <= settings.retries:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = f"gave up at the {settings.deadline_seconds:g} s deadline; last error: {error}"
            break
        attempts += 1
        try:
            send(min(settings.timeout_seconds, remaining))
            if attempts > 1:
                log.info("alert to %s delivered on attempt %d", label, attempts)
            return Delivery(channel=label, ok=True, attempts=attempts, error=None)
        except DeliveryFailed as exc:
            error = str(exc)
            temporary = exc.temporary
        except Exception as exc:  # a bug in rendering or transport must not escape either
            error = f"{type(exc).__name__}: {exc}"
            temporary = False
        log.warning("alert to %s failed (attempt %d of %d): %s", label, attempts, settings.retries + 1, error)
        if not temporary:
            break
        pause = settings.backoff_seconds * 2 ** (attempts - 1)
        if attempts <= settings.retries and time.monotonic() + pause < deadline:
            time.sleep(pause)
        elif attempts <= settings.retries:
            error = f"gave up at the {settings.deadline_seconds:g} s deadline; last error: {error}"
            break
    log.error("alert to %s not delivered after %d attempt(s): %s", label, attempts, error)
    return Delivery(channel=label, ok=False, attempts=attempts, error=error)


def _webhook_attempt(hook: WebhookChannel, event: AlertEvent, timeout: float) -> None:
    send_webhook(hook, event, timeout_seconds=timeout)


def _email_attempt(mail: EmailChannel, event: AlertEvent, timeout: float) -> None:
    send_email(mail, event, timeout_seconds=timeout)


def dispatch(event: AlertEvent, settings: AlertSettings) -> list[Delivery]:
    """Send `event` to every configured channel; one Delivery per channel, in configuration order."""
    try:
        senders: list[tuple[str, Sender]] = [
            (hook.label, functools.partial(_webhook_attempt, hook, event)) for hook in settings.webhooks
        ]
        if settings.email is not None:
            senders.append((settings.email.label, functools.partial(_email_attempt, settings.email, event)))
        if not senders:
            return []
        deadline = time.monotonic() + settings.deadline_seconds
        with ThreadPoolExecutor(max_workers=len(senders), thread_name_prefix="shepherd-alert") as pool:
            futures = [pool.submit(_deliver, label, send, settings, deadline) for label, send in senders]
            return [future.result() for future in futures]
    except Exception as exc:  # never let alerting take a rollback down
        log.exception("alert dispatch for %s %s v%s failed", event.event, event.model, event.version)
        return [Delivery(channel="dispatch", ok=False, attempts=0, error=f"{type(exc).__name__}: {exc}")]
