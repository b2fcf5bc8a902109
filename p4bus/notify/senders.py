"""Delivering one notice to one receiver: an HTTP POST (generic webhook, Slack) or a mail over
SMTP with STARTTLS. Each call either returns (the receiver took it), raises Rejected (the
receiver refused this notice for good: retrying cannot help) or raises anything else (down,
slow, refusing for now: retry later). Every network wait is bounded by the receiver's timeout_s.
"""

from __future__ import annotations

import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable

from common.config import NotifyReceiver, read_password_file
from p4bus.notify import message
from p4bus.notify.message import Notice
from p4bus.notify.rules import webhook_url

Send = Callable[[Notice], None]

# HTTP answers that mean "not now" rather than "never": retried like a receiver that is down.
_HTTP_RETRY = frozenset({408, 425, 429})


class Rejected(Exception):
    """The receiver refused this notice for good (HTTP 4xx, SMTP 5xx to the message)."""


def sender(rcv: NotifyReceiver) -> Send:
    if rcv.kind == "email":
        return lambda n: send_mail(rcv, n)
    body = message.slack_body if rcv.kind == "slack" else message.webhook_body
    return lambda n: post(webhook_url(rcv), body(n), n.key, rcv.timeout_s)


def post(url: str, body: bytes, key: str, timeout_s: float) -> None:
    try:
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": "p4bus-notify"},
        )
    except ValueError:
        # urllib's message quotes the URL, which may be a secret (url_file): not into the log.
        raise ValueError("the webhook URL is not one urllib can open (see url / url_file)") from None
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in _HTTP_RETRY:
            raise Rejected(f"HTTP {exc.code} {exc.reason}") from None
        raise


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verifies the server's certificate and name, against ``ca_file`` if given."""
    return ssl.create_default_context(cafile=ca_file or None)


def send_mail(rcv: NotifyReceiver, n: Notice) -> None:
    msg = message.email(n, rcv.sender, rcv.to)
    # Read at every send: a password file fixed or rotated is used without a restart.
    password = read_password_file(rcv.password_file) if rcv.username else ""
    with smtplib.SMTP(rcv.smtp_host, rcv.smtp_port, timeout=rcv.timeout_s) as smtp:
        smtp.ehlo()
        # Never in the clear: a server without STARTTLS is an error (smtplib raises), not a fallback.
        smtp.starttls(context=tls_context(rcv.ca_file))
        smtp.ehlo()
        if rcv.username:
            smtp.login(rcv.username, password)
        try:
            smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            if all(code >= 500 for code, _ in exc.recipients.values()):
                raise Rejected(f"every recipient refused: {exc.recipients}") from None
            raise
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            if 500 <= exc.smtp_code < 600:
                raise Rejected(f"SMTP {exc.smtp_code} {exc.smtp_error!r}") from None
            raise
