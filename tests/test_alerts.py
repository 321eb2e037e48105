"""Alerts against real local servers: an http.server in a thread and an aiosmtpd SMTP server.

Nothing is mocked: the webhook bodies are what `requests` really POSTed, the mail is what smtplib
really delivered. Failing channels must be retried, must not raise, and must not take long.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from control_plane.alerts import AlertEvent, AlertSettings, EmailChannel, WebhookChannel, dispatch, render_webhook
from control_plane.errors import AlertError

FAST: dict[str, Any] = {"backoff_seconds": 0.05, "timeout_seconds": 2.0, "deadline_seconds": 10.0}


def _event(**changes: Any) -> AlertEvent:
    fields: dict[str, Any] = dict(
        event="rollback",
        model="query_intent",
        version=7,
        reason="latency regressed: x1.52 (limit x1.25), U-test p=3e-09",
        at=datetime(2026, 11, 24, 9, 0, tzinfo=UTC),
        evidence={"outcome": "rollback", "checks": [{"name": "latency", "p_value": 3e-9}], "at": datetime(2026, 1, 1)},
        severity="critical",
    )
    return AlertEvent(**(fields | changes))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a real HTTP receiver ---------------------------------------------------------------------
@dataclass
class Receiver:
    base: str
    bodies: dict[str, list[Any]] = field(default_factory=dict)
    script: dict[str, list[int]] = field(default_factory=dict)  # path -> status codes to answer, in turn
    wecom_errcode: dict[str, int] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            with state.lock:
                state.bodies.setdefault(self.path, []).append(body)
                codes = state.script.get(self.path)
                status = codes.pop(0) if codes else 200
            time.sleep(state.delay.get(self.path, 0))
            answer = json.dumps({"errcode": state.wecom_errcode.get(self.path, 0), "errmsg": "from test"}).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_three_webhook_formats_are_delivered_as_their_receivers_expect(receiver: Receiver) -> None:
    settings = AlertSettings(
        webhooks=(
            WebhookChannel(receiver.url("/generic")),
            WebhookChannel(receiver.url("/slack/T0/B0/secret"), format="slack"),
            WebhookChannel(receiver.url("/cgi-bin/webhook/send?key=abc"), format="wecom", name="wecom-robot"),
        ),
        **FAST,
    )
    deliveries = dispatch(_event(), settings)
    assert [(d.ok, d.attempts, d.error) for d in deliveries] == [(True, 1, None)] * 3
    assert deliveries[2].channel == "wecom-robot"
    assert "secret" not in deliveries[1].channel

    (generic,) = receiver.bodies["/generic"]
    assert generic["event"] == "rollback" and generic["model"] == "query_intent" and generic["version"] == 7
    assert generic["reason"].startswith("latency regressed") and generic["severity"] == "critical"
    assert generic["at"] == "2026-11-24T09:00:00+00:00"
    assert generic["evidence"]["checks"][0]["p_value"] == 3e-9
    assert generic["evidence"]["at"] == "2026-01-01T00:00:00"  # datetimes in evidence become text

    (slack,) = receiver.bodies["/slack/T0/B0/secret"]
    assert "query_intent version 7" in slack["text"]
    assert slack["blocks"][0]["type"] == "header"
    assert "rollback" in slack["blocks"][0]["text"]["text"]
    assert "latency regressed" in slack["blocks"][1]["text"]["text"]
    assert {"type": "mrkdwn", "text": "*Version*\n7"} in slack["blocks"][2]["fields"]

    (wecom,) = receiver.bodies["/cgi-bin/webhook/send?key=abc"]
    assert wecom["msgtype"] == "markdown"
    content = wecom["markdown"]["content"]
    assert "query_intent" in content and "version: 7" in content and "latency regressed" in content
    assert '<font color="warning">critical</font>' in content


def test_render_limits_and_escaping() -> None:
    long = _event(reason="<b>&" + "x" * 10_000)
    slack = render_webhook(long, "slack")
    assert len(slack["blocks"][1]["text"]["text"]) <= 3000
    assert "&lt;b&gt;&amp;" in slack["blocks"][1]["text"]["text"]
    wecom = render_webhook(_event(reason="延迟" * 5000), "wecom")
    assert len(wecom["markdown"]["content"].encode("utf-8")) <= 4096
    with pytest.raises(AlertError, match="teams"):
        render_webhook(_event(), "teams")
    with pytest.raises(AlertError, match="explosion"):
        _event(event="explosion")


def test_server_errors_are_retried_until_delivered(receiver: Receiver) -> None:
    receiver.script["/flaky"] = [500, 500, 200]
    settings = AlertSettings(webhooks=(WebhookChannel(receiver.url("/flaky")),), retries=3, **FAST)
    (delivery,) = dispatch(_event(), settings)
    assert delivery.ok and delivery.attempts == 3 and delivery.error is None
    assert len(receiver.bodies["/flaky"]) == 3


def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.script["/gone"] = [404, 404, 404]
    receiver.wecom_errcode["/robot"] = 93000  # WeCom: invalid webhook url, sent with HTTP 200
    settings = AlertSettings(
        webhooks=(WebhookChannel(receiver.url("/gone")), WebhookChannel(receiver.url("/robot"), format="wecom")),
        **FAST,
    )
    gone, robot = dispatch(_event(), settings)
    assert (gone.ok, gone.attempts) == (False, 1) and "404" in (gone.error or "")
    assert (robot.ok, robot.attempts) == (False, 1) and "93000" in (robot.error or "")


def test_closed_port_fails_without_raising_in_bounded_time() -> None:
    url = f"http://127.0.0.1:{_free_port()}/hooks/T0/SECRET-TOKEN"
    settings = AlertSettings(webhooks=(WebhookChannel(url),), retries=2, **FAST)
    started = time.monotonic()
    (delivery,) = dispatch(_event(), settings)
    elapsed = time.monotonic() - started
    assert not delivery.ok and delivery.attempts == 3
    assert "SECRET-TOKEN" not in (delivery.error or "") and "SECRET-TOKEN" not in delivery.channel
    assert "Connection" in (delivery.error or "")
    assert elapsed < 3.0  # 3 refused connections and 0.05 + 0.1 s of backoff


def test_credentials_in_a_webhook_url_never_reach_rows_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """`https://user:password@host/...` is a common way to authenticate a webhook: the password stays secret."""
    url = f"http://alice:s3cret-pw@127.0.0.1:{_free_port()}/hooks/T0/SECRET-TOKEN"
    settings = AlertSettings(webhooks=(WebhookChannel(url),), retries=1, **FAST)
    with caplog.at_level("DEBUG"):
        (delivery,) = dispatch(_event(), settings)
    assert not delivery.ok
    shown = [delivery.channel, delivery.error or "", caplog.text]
    for secret in ("s3cret-pw", "alice:", "SECRET-TOKEN"):
        assert all(secret not in text for text in shown), (secret, shown)
    assert "127.0.0.1" in delivery.channel  # still tells the channels apart
    from control_plane.alerts.channels import redact_url

    assert redact_url(url) == f"http://127.0.0.1:{url.split(':')[3].split('/')[0]}/…"


def test_a_hanging_receiver_is_cut_off_by_the_deadline(receiver: Receiver) -> None:
    receiver.delay["/slow"] = 3.0
    settings = AlertSettings(
        webhooks=(WebhookChannel(receiver.url("/slow")),),
        retries=10,
        backoff_seconds=0.05,
        timeout_seconds=0.4,
        deadline_seconds=1.0,
    )
    started = time.monotonic()
    (delivery,) = dispatch(_event(), settings)
    assert time.monotonic() - started < 2.0
    assert not delivery.ok and "deadline" in (delivery.error or "")


def test_no_channels_means_no_deliveries() -> None:
    assert dispatch(_event(), AlertSettings()) == []


# -- a real SMTP server -----------------------------------------------------------------------
class Mailbox:
    def __init__(self, refuse: bool = False) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []
        self.refuse = refuse

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def _mail(port: int) -> EmailChannel:
    return EmailChannel(
        host="127.0.0.1", port=port, sender="shepherd@example.com", recipients=("oncall@example.com", "ml@example.com")
    )


def test_email_reaches_a_real_smtp_server(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    (delivery,) = dispatch(_event(), AlertSettings(email=_mail(port), **FAST))
    assert delivery.ok and delivery.attempts == 1 and delivery.channel == f"email:127.0.0.1:{port}"
    (sender, recipients, message) = mailbox.messages[0]
    assert sender == "shepherd@example.com"
    assert recipients == ["oncall@example.com", "ml@example.com"]
    subject = str(message["Subject"])
    assert "rollback" in subject and "query_intent" in subject and "version 7" in subject
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "query_intent version 7" in body
    assert "latency regressed: x1.52" in body
    assert '"p_value": 3e-09' in body


def test_refused_recipients_are_not_retried() -> None:
    mailbox = Mailbox(refuse=True)
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        (delivery,) = dispatch(_event(), AlertSettings(email=_mail(port), **FAST))
    finally:
        controller.stop()
    assert not delivery.ok and delivery.attempts == 1
    assert "refused" in (delivery.error or "") or "550" in (delivery.error or "")
    assert mailbox.messages == []


def test_smtp_down_does_not_raise_and_other_channels_still_deliver(receiver: Receiver) -> None:
    settings = AlertSettings(
        webhooks=(WebhookChannel(receiver.url("/still-works")),), email=_mail(_free_port()), retries=1, **FAST
    )
    started = time.monotonic()
    hook, mail = dispatch(_event(event="failure"), settings)
    assert time.monotonic() - started < 3.0
    assert hook.ok and receiver.bodies["/still-works"][0]["event"] == "failure"
    assert not mail.ok and mail.attempts == 2 and "Connection" in (mail.error or "")
