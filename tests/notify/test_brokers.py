"""The notifier with two replicated brokers: it reads both journals, each with its own cursor,
and tells each job change once. The first broker SIGKILLed for good mid-run, the notifier
SIGKILLed and restarted meanwhile, the broker back with its journal lost: every notice is sent
exactly once, none is missing (docs/reliability.md, "a broker dies for good")."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import wait_for
from tests.notify.conftest import NotifyStack, mail_receiver
from tests.notify.receivers import SmtpReceiver

pytestmark = pytest.mark.timeout(180)


def _mail_receiver(notify: NotifyStack, smtp: SmtpReceiver, tmp_path) -> None:
    mail_receiver(notify, smtp, tmp_path)
    notify.rule(["mail"], events=["failed", "done"])


def _sent(smtp: SmtpReceiver) -> Counter[str]:
    return Counter(m.message["X-P4bus-Event"] for m in smtp.mails)


def test_first_of_two_brokers_killed_for_good_mid_run_every_notice_once(
    notify: NotifyStack, smtp: SmtpReceiver, tmp_path
) -> None:
    _mail_receiver(notify, smtp, tmp_path)
    notify.start_brokers(2)
    first, second = notify.stack.config().broker_replays()
    notify.start_notifier()
    keys: list[str] = []

    def jobs(names: range) -> None:
        for i in names:
            notify.publish(f"j{i}", "RUNNING", workspace="ws")  # no news: a cursor move, no notice
            keys.append(notify.publish(f"j{i}", "FAILED" if i % 2 else "DONE", workspace="ws"))

    jobs(range(6))
    # Killed while the notifier is still reading and sending these.
    notify.stack.kill("broker")
    notify.journals = [second]
    jobs(range(6, 12))
    smtp.wait_mails(12)
    # Killed only once every mail is marked sent: a kill between the server taking a mail and
    # the notifier writing that down sends it again, by design (docs/reliability.md), which is
    # not what this test is about.
    for key in keys:
        notify.wait_outbox(key, "mail", lambda state, _attempts: state == "sent", "marked sent")
    cursors = notify.cursors()
    assert set(cursors) == {first, second}, cursors

    # The notifier SIGKILLed and restarted while the first broker is still dead: it resumes
    # from its cursors (the dead broker's costs it its timeout once, not a repeat).
    notify.stack.kill("notify")
    jobs(range(12, 15))  # published while nobody reads
    notify.start_notifier()
    smtp.wait_mails(15)
    assert notify.cursors()[second] > cursors[second]

    # The first broker back with a new, empty journal (the old one lost): its cursor is past
    # the new journal's head, so it is read from the start; what it has, the second had too.
    notify.stack.restart("broker", extra={"broker": {"journal": str(tmp_path / "journal-lost.db")}})
    notify.journals = [first, second]
    notify.connected()
    jobs(range(15, 20))
    smtp.wait_mails(20)

    def read_the_new_journal() -> bool:
        # The broker found down is read again once it delivers live, RETRY_DOWN_S after.
        notify.publish("probe", "RUNNING", workspace="ws")
        return any("journal.reset" in line for line in notify.log_lines())

    wait_for(read_the_new_journal, 30, "the notifier to read the first broker's new journal", 0.5)

    # The dead broker cost a wait once, at the restart (PROBE_S: it might have been starting),
    # not at every read: found down, it is skipped until it delivers live again.
    assert len([line for line in notify.log_lines() if "no answer from the broker" in line]) <= 1

    sentinel = notify.publish("sentinel", "FAILED", workspace="ws")
    smtp.wait_mails(21)
    sent = _sent(smtp)
    assert sent == Counter([*keys, sentinel]), sent  # each once, none missing
    notify.stack.check_alive()
