"""The notifier against real receivers: formats, rules, a receiver down and one that hangs."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from tests.notify.conftest import WEB_URL, NotifyStack, mail_receiver, secret_file
from tests.notify.receivers import HttpReceiver, SmtpReceiver, self_signed

pytestmark = pytest.mark.timeout(90)


def test_each_receiver_gets_its_notices_in_its_format(
    notify: NotifyStack, http: HttpReceiver, smtp: SmtpReceiver, tmp_path
) -> None:
    notify.receiver("hook", kind="webhook", url=http.url("/hook"))
    # Slack's URL is its secret: from a 0600 file.
    notify.receiver("chat", kind="slack", url_file=str(secret_file(tmp_path, http.url("/slack"), name="slack-url")))
    mail_receiver(notify, smtp, tmp_path)
    notify.rule(["hook", "chat", "mail"], workspaces=["ws-*"], events=["waiting"])
    notify.rule(["hook"], events=["failed", "done"])
    notify.start_broker()
    notify.start_notifier()

    conflicts = ["//depot/main/src/conflict.c", "//depot/main/<b>x</b>.c"]
    notify.publish("j1", "QUEUED", workspace="ws-1")
    notify.publish("j1", "RUNNING", stage="INTEGRATE", workspace="ws-1")
    waiting = notify.publish(
        "j1", "WAITING_RESOLVE", stage="RESOLVE", workspace="ws-1", conflicts=conflicts, reason="2 files need resolving"
    )
    # The orchestrator publishes the job again when a re-check finds the same conflict: no news.
    notify.publish("j1", "WAITING_RESOLVE", stage="RESOLVE_CHECK", workspace="ws-1", conflicts=conflicts)
    # Waiting in a workspace no rule names for "waiting": nobody is told.
    notify.publish("j2", "WAITING_RESOLVE", stage="RESOLVE", workspace="other", conflicts=conflicts)
    failed = notify.publish("j2", "FAILED", stage="SUBMIT", workspace="other", reason="submit refused: trigger")
    done = notify.publish("j1", "DONE", stage="SUBMIT", workspace="ws-1", submitted_change=42)

    posts = http.wait_posts(4)
    mails = smtp.wait_mails(1)
    hooks = [p for p in posts if p.path == "/hook"]
    assert [p.headers["Idempotency-Key"] for p in hooks] == [waiting, failed, done]
    first = hooks[0].body
    assert first["job_id"] == "j1" and first["kind"] == "waiting" and first["state"] == "WAITING_RESOLVE"
    assert first["conflicts"] == conflicts and first["reason"] == "2 files need resolving"
    assert first["url"] == f"{WEB_URL}/jobs/j1" and first["workspace"] == "ws-1"
    assert first["key"] == waiting and "waits for a person in ws-1" in first["summary"]
    assert hooks[1].body["reason"] == "submit refused: trigger" and hooks[2].body["submitted_change"] == 42

    (slack,) = [p for p in posts if p.path == "/slack"]
    text = slack.body["text"]
    assert set(slack.body) == {"text"} and f"<{WEB_URL}/jobs/j1|Open job j1>" in text
    assert "//depot/main/&lt;b&gt;x&lt;/b&gt;.c" in text and "<b>" not in text

    (mail,) = mails
    assert mail.login == smtp.user and mail.mechanism == "LOGIN"
    assert mail.rcpt_tos == ["release@example.com"] and mail.mail_from == "p4bus@build.example.com"
    digest = hashlib.sha256(waiting.encode()).hexdigest()[:32]
    assert (
        mail.message["Message-ID"] == f"<{digest}.p4bus@build.example.com>" and mail.message["X-P4bus-Event"] == waiting
    )
    body = mail.message.get_payload(decode=True).decode()
    assert all(f in body for f in conflicts) and f"{WEB_URL}/jobs/j1" in body and "WAITING_RESOLVE" in body

    # Nothing more arrives: the sentinel, published last, is delivered after all of the above.
    sentinel = notify.publish("j3", "FAILED", workspace="ws-2")
    assert http.wait_posts(5)[-1].headers["Idempotency-Key"] == sentinel
    assert len(http.posts) == 5 and len(smtp.mails) == 1


def test_mail_goes_only_to_a_server_whose_certificate_verifies(
    notify: NotifyStack, smtp: SmtpReceiver, tmp_path
) -> None:
    other = tmp_path / "other-ca"
    other.mkdir()
    # Not the CA of the server's certificate.
    mail_receiver(notify, smtp, tmp_path, ca_file=str(self_signed(other).cert), to=["a@example.com"])
    notify.rule(["mail"])
    notify.start_broker()
    notify.start_notifier()
    key = notify.publish("j1", "FAILED", workspace="ws")
    notify.wait_outbox(key, "mail", lambda state, attempts: attempts >= 2, "tried twice")
    assert notify.outbox(key)["mail"][0] == "pending" and "CERTIFICATE_VERIFY_FAILED" in notify.last_error(key, "mail")
    assert smtp.mails == []
    assert smtp.password not in "\n".join(notify.log_lines())


def test_a_receiver_that_is_down_gets_its_notice_once_it_is_up(
    notify: NotifyStack, http: HttpReceiver, tmp_path
) -> None:
    secret = "/services/T0001/B0002/secret-token-4711"
    notify.receiver(
        "hook", kind="webhook", url_file=str(secret_file(tmp_path, http.url(secret), name="hook-url")), timeout_s=5
    )
    notify.rule(["hook"])
    notify.start_broker()
    notify.start_notifier()
    http.down()
    key = notify.publish("j1", "FAILED", workspace="ws", reason="boom")
    # Tried again and again while down, waiting longer each time (0.2 s doubling to 1 s).
    notify.wait_outbox(key, "hook", lambda state, attempts: attempts >= 4, "4 failed tries")
    waits = [float(m) for m in re.findall(r'"retry_in_s": ([0-9.]+)', "\n".join(notify.log_lines()))]
    assert len(waits) >= 4 and waits[0] < 0.3 and waits[2] > waits[0] * 2, waits
    http.up()
    assert [p.headers["Idempotency-Key"] for p in http.wait_posts(1)] == [key]
    notify.wait_outbox(key, "hook", lambda state, _: state == "sent", "sent")
    sentinel = notify.publish("j2", "DONE", workspace="ws")
    http.wait_posts(2)
    assert http.keys() == [key, sentinel] and http.posts[0].path == secret
    assert "secret-token" not in "\n".join(notify.log_lines())  # the URL is the secret: never logged


def test_a_hanging_receiver_does_not_delay_the_others(notify: NotifyStack, http: HttpReceiver) -> None:
    stuck = HttpReceiver().up()
    stuck.hang.set()
    try:
        notify.receiver("stuck", kind="webhook", url=stuck.url(), timeout_s=60)
        notify.receiver("hook", kind="webhook", url=http.url())
        notify.rule(["stuck", "hook"])
        notify.start_broker()
        notify.start_notifier()
        first = notify.publish("j1", "FAILED", workspace="ws")
        stuck.wait_posts(1)  # the stuck receiver holds the first notice and answers nothing
        second = notify.publish("j2", "FAILED", workspace="ws")
        # Well within the stuck receiver's 60 s timeout: its worker still waits for an answer.
        assert [p.headers["Idempotency-Key"] for p in http.wait_posts(2, timeout=30)] == [first, second]
        assert len(stuck.posts) == 1
        stuck.release.set()
        assert stuck.wait_posts(2)[1].headers["Idempotency-Key"] == second
        assert stuck.keys() == [first, second]
    finally:
        stuck.close()


def test_a_refused_notice_is_set_aside_and_a_server_error_retried(notify: NotifyStack, http: HttpReceiver) -> None:
    notify.receiver("hook", kind="webhook", url=http.url())
    notify.rule(["hook"])
    notify.start_broker()
    notify.start_notifier()
    http.status = 410  # gone: this notice will never be taken
    refused = notify.publish("j1", "FAILED", workspace="ws")
    assert notify.wait_outbox(refused, "hook", lambda state, _: state == "rejected", "rejected") == ("rejected", 1)
    http.status = 503  # down for maintenance: try again
    retried = notify.publish("j2", "FAILED", workspace="ws")
    notify.wait_outbox(retried, "hook", lambda state, attempts: attempts >= 2, "tried twice")
    http.status = 200
    _, attempts = notify.wait_outbox(retried, "hook", lambda state, _: state == "sent", "sent")
    keys = http.keys()
    assert keys.count(refused) == 1 and keys.count(retried) == attempts >= 3
    assert any("notify.rejected" in line and "HTTP 410" in line for line in notify.log_lines())


def test_forged_job_events_are_not_announced(notify: NotifyStack, http: HttpReceiver) -> None:
    notify.receiver("hook", kind="webhook", url=http.url())
    notify.rule(["hook"])
    notify.start_broker()
    notify.start_notifier()
    # An agent's key may publish, but only the orchestrator's speaks for jobs.
    notify.publish("j1", "FAILED", key="rogue-agent", workspace="ws", reason="forged")
    real = notify.publish("j1", "FAILED", workspace="ws", reason="real")
    assert [p.body["reason"] for p in http.wait_posts(1)] == ["real"]
    assert http.keys() == [real]
    assert any("notify.untrusted_event" in line and "rogue-agent" in line for line in notify.log_lines())


def test_json_body_is_one_object(http: HttpReceiver) -> None:
    """The receiver helper itself: a POST it records is what was sent (guards the tests above)."""
    import urllib.request

    req = urllib.request.Request(http.url(), data=json.dumps({"a": 1}).encode(), method="POST")
    req.add_header("Idempotency-Key", "k")
    with urllib.request.urlopen(req, timeout=5):
        pass
    assert http.wait_posts(1)[0].body == {"a": 1}
