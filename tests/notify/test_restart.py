"""The notifier SIGKILLed between a job event and its delivery: delivered once after restart."""

from __future__ import annotations

import pytest

from tests.notify.conftest import NotifyStack
from tests.notify.receivers import HttpReceiver

pytestmark = pytest.mark.timeout(90)


def test_killed_with_a_delivery_pending_and_an_event_unread_delivers_each_once(
    notify: NotifyStack, http: HttpReceiver
) -> None:
    notify.receiver("hook", kind="webhook", url=http.url(), timeout_s=5)
    notify.rule(["hook"])
    notify.start_broker()
    notify.start_notifier()
    http.down()
    pending = notify.publish("j1", "FAILED", workspace="ws", reason="pending at the crash")
    notify.wait_outbox(pending, "hook", lambda state, attempts: state == "pending" and attempts >= 1, "tried")
    notify.stack.kill("notify")
    # Published while the notifier is dead: it reads it from the journal when it is back.
    unread = notify.publish("j2", "WAITING_RESOLVE", workspace="ws", conflicts=["//depot/a.c"])
    http.up()
    notify.start_notifier()
    assert http.wait_posts(2) and http.keys()[:2] == [pending, unread]
    sentinel = notify.publish("j3", "DONE", workspace="ws")
    http.wait_posts(3)
    assert http.keys() == [pending, unread, sentinel]
    state, attempts = notify.outbox(pending)["hook"]
    assert state == "sent" and attempts >= 2


def test_killed_after_sending_before_recording_resends_with_the_same_key(
    notify: NotifyStack, http: HttpReceiver
) -> None:
    """The one window left (docs/reliability.md): the receiver took the notice, the notifier
    died before writing that down. It is sent again, with the same idempotency key, so the
    receiver can tell it is the same notice."""
    notify.receiver("hook", kind="webhook", url=http.url(), timeout_s=60)
    notify.rule(["hook"])
    notify.start_broker()
    notify.start_notifier()
    http.hang.set()
    key = notify.publish("j1", "FAILED", workspace="ws")
    http.wait_posts(1)  # received; the notifier waits for the answer
    notify.stack.kill("notify")
    http.hang.clear()
    http.release.set()
    notify.start_notifier()
    notify.wait_outbox(key, "hook", lambda state, _: state == "sent", "sent")
    sentinel = notify.publish("j2", "DONE", workspace="ws")
    http.wait_posts(3)
    assert http.keys() == [key, key, sentinel]
    assert http.posts[0].body == http.posts[1].body
