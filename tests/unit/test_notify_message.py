"""What notifications say in each format (p4bus/notify/message.py), and the outbox that keeps
them (p4bus/notify/outbox.py, a real SQLite file)."""

from __future__ import annotations

import json
import stat
from email import message_from_bytes, policy

import msgspec

from broker.journals import Mark
from common import protocol as P
from p4bus.notify import message
from p4bus.notify.message import Notice
from p4bus.notify.outbox import REJECTED, Outbox, Stamp

WEB = "https://dash.example.com"


def event(state: str = "WAITING_RESOLVE", seq: int = 7, **detail) -> P.JobChanged:
    return P.JobChanged(
        topic="job.j1",
        source="orch",
        epoch="e1",
        seq=seq,
        ts=1.0e9,
        job_id="j1",
        state=state,
        stage="RESOLVE",
        detail=detail,
    )


def waiting(**detail) -> Notice:
    return message.notice(event(**detail), "waiting", WEB)


def test_notice_takes_the_job_facts_and_ignores_ill_typed_ones():
    n = waiting(
        workspace="ws1", conflicts=["//a.c", 3], reason="2 files", change=12, submitted_change="x", key_line=None
    )
    assert (n.key, n.job_id, n.workspace, n.url) == ("orch/e1/7", "j1", "ws1", f"{WEB}/jobs/j1")
    assert n.conflicts == ["//a.c"] and n.reason == "2 files" and n.change == 12
    assert n.submitted_change is None and n.key_line == ""
    assert message.notice(event(conflicts="//a.c", change=True), "waiting", WEB).conflicts == []


def test_headlines():
    assert message.headline(waiting(workspace="ws1", conflicts=["a", "b"])) == (
        "p4bus job j1 waits for a person in ws1: 2 conflicting files"
    )
    assert message.headline(waiting(conflicts=["a"])) == "p4bus job j1 waits for a person: 1 conflicting file"
    failed = message.notice(event("FAILED", reason="submit refused"), "failed", WEB)
    assert message.headline(failed) == "p4bus job j1 failed at RESOLVE: submit refused"
    done = message.notice(event("DONE", workspace="w", submitted_change=42), "done", WEB)
    assert message.headline(done) == "p4bus job j1 finished in w: DONE, submitted change 42"
    assert message.headline(message.notice(event("CANCELLED"), "cancelled", WEB)) == "p4bus job j1 was cancelled"


def test_webhook_body_is_the_whole_notice_as_json():
    n = waiting(workspace="ws1", conflicts=["//a.c"])
    body = json.loads(message.webhook_body(n))
    assert body == {**msgspec.to_builtins(n), "summary": message.headline(n)}
    assert body["key"] == "orch/e1/7" and body["url"] == f"{WEB}/jobs/j1"


def test_slack_text_escapes_p4_text_and_caps_the_file_list():
    files = [f"//depot/<x>&{i}.c" for i in range(message.MAX_FILES + 3)]
    text = json.loads(message.slack_body(waiting(conflicts=files, reason="a <b> & c")))["text"]
    assert "<x>" not in text and "//depot/&lt;x&gt;&amp;0.c" in text and "Reason: a &lt;b&gt; &amp; c" in text
    assert f"<{WEB}/jobs/j1|Open job j1>" in text
    assert text.count("• ") == message.MAX_FILES and "and 3 more on the job's page" in text


def test_mail_has_a_stable_message_id_and_a_one_line_subject():
    n = waiting(workspace="ws1", conflicts=["//a.c"], reason="line one\nline two")
    mail = message.email(n, "p4bus@build.example.com", ["a@example.com", "b@example.com"], now=1.0e9)
    again = message.email(n, "p4bus@build.example.com", ["a@example.com"], now=2.0e9)
    other = message.email(message.notice(event(seq=8), "waiting", WEB), "p4bus@build.example.com", ["a@example.com"])
    assert mail["Message-ID"] == again["Message-ID"] != other["Message-ID"]
    assert mail["Message-ID"].endswith("@build.example.com>")
    parsed = message_from_bytes(mail.as_bytes(), policy=policy.default)
    assert parsed["Subject"] == "p4bus job j1 waits for a person in ws1: 1 conflicting file"
    assert parsed["To"] == "a@example.com, b@example.com" and parsed["X-P4bus-Event"] == "orch/e1/7"
    body = parsed.get_content()
    assert "//a.c" in body and f"Job page: {WEB}/jobs/j1" in body and "line one\nline two" in body


def _stamp(seq: int) -> Stamp:
    return Stamp("orchestrator", "orch", "e1", seq)


def test_outbox_records_an_event_once_with_its_stamp(tmp_path):
    path = tmp_path / "state" / "notify.db"
    box = Outbox(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert box.cursors() == {} and box.next_pending("hook") is None
    n = waiting()
    assert box.record(_stamp(7), 1.0e9, "j1", "WAITING_RESOLVE", [("hook", n), ("mail", n)]) == 2
    # Read again after a crash: nothing new.
    assert box.record(_stamp(7), 1.0e9, "j1", "WAITING_RESOLVE", [("hook", n)]) == 0
    assert box.seen(_stamp(7)) and not box.seen(_stamp(9)) and box.job("j1") == ("WAITING_RESOLVE", 1.0e9)
    box.set_cursors({"tcp://b1:4": Mark(5, 5, "job.j1", "d1"), "tcp://b2:4": Mark(8)})
    later = message.notice(event("FAILED", seq=9), "failed", WEB)
    box.record(_stamp(9), 1.0e9 + 1, "j1", "FAILED", [("hook", later)])
    assert box.next_pending("hook") == (n.key, n, 0)
    box.failed("hook", n.key, "refused")
    assert box.next_pending("hook") == (n.key, n, 1)  # oldest first, also after a failure
    box.done("hook", n.key)
    assert box.next_pending("hook") == (later.key, later, 0)
    box.done("hook", later.key, REJECTED, "HTTP 400")
    assert box.next_pending("hook") is None and box.next_pending("mail") == (n.key, n, 0)
    assert box.counts() == {("hook", "sent"): 1, ("hook", "rejected"): 1, ("mail", "pending"): 1}
    box.close()
    reopened = Outbox(path)
    assert reopened.cursors() == {"tcp://b1:4": Mark(5, 5, "job.j1", "d1"), "tcp://b2:4": Mark(8)}
    assert reopened.next_pending("mail") == (n.key, n, 0)


def test_prune_keeps_pending_notices_and_jobs_still_going(tmp_path):
    box = Outbox(tmp_path / "notify.db")
    a, b = waiting(), message.notice(event("FAILED", seq=8), "failed", WEB)
    box.record(_stamp(7), 1.0e9, "j1", "WAITING_RESOLVE", [("hook", a), ("mail", a)])
    box.record(_stamp(8), 1.0e9, "j2", "FAILED", [("hook", b)])
    box.done("hook", a.key)
    box.done("hook", b.key)
    assert box.prune(older_than=4.0e9) == 2
    assert box.counts() == {("mail", "pending"): 1}
    assert box.job("j1") == ("WAITING_RESOLVE", 1.0e9) and box.job("j2") is None
    assert not box.seen(_stamp(8))  # handled long ago: forgotten (the reader skips it: history_before)
