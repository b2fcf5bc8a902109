"""The notifier's state file with several brokers (p4bus/notify/outbox.py, service.py): the one
cursor of a notifier that read one broker migrates to the first broker; a second broker's copy
of an event, or an event read again after a crash, adds nothing; a copy one broker delivers late,
after a newer event of its job, neither sets the job back nor is announced."""

from __future__ import annotations

import sqlite3
import threading

from broker.journals import Mark
from common import protocol as P
from common.config import Config, NotifyConf, NotifyReceiver, NotifyRule
from p4bus.notify.outbox import Outbox, Stamp
from p4bus.notify.service import Notifier
from p4bus.notify.source import JobEvent


def _legacy_state(path) -> None:
    """A state file as a notifier that read one broker left it."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE cursor (one INTEGER PRIMARY KEY CHECK (one = 1), journal_id INTEGER NOT NULL);"
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);"
        "INSERT INTO cursor VALUES (1, 4711);"
        "INSERT INTO jobs VALUES ('j1', 'RUNNING', 100.0);"
    )
    db.commit()
    db.close()


def test_the_one_broker_cursor_becomes_the_first_brokers(tmp_path):
    path = tmp_path / "notify.db"
    _legacy_state(path)
    outbox = Outbox(path)
    try:
        assert outbox.cursors() == {}
        outbox.take_legacy_cursor("tcp://first:4")
        assert outbox.cursors() == {"tcp://first:4": Mark(4711)}
        outbox.take_legacy_cursor("tcp://first:4")  # once only: the legacy row is gone
        assert outbox.cursors() == {"tcp://first:4": Mark(4711)}
        assert outbox.job("j1") == ("RUNNING", 0.0)  # a job from before event times were kept
        outbox.set_cursors({"tcp://first:4": Mark(4800, 4790, "job.j1", "ab"), "tcp://second:4": Mark(12)})
        assert outbox.cursors()["tcp://first:4"] == Mark(4800, 4790, "job.j1", "ab")
    finally:
        outbox.close()


def _ev(job_id: str, state: str, seq: int, ts: float) -> JobEvent:
    ev = P.JobChanged(topic=f"job.{job_id}", source="orch", epoch="e1", seq=seq, ts=ts, job_id=job_id, state=state)
    return JobEvent(Stamp("orchestrator", "orch", "e1", seq), ev)


def test_copies_and_late_copies_are_announced_never_twice_and_never_set_a_job_back(tmp_path):
    cfg = Config(
        state_dir=str(tmp_path),
        notify=NotifyConf(
            receivers={"hook": NotifyReceiver(kind="webhook", url="http://127.0.0.1:9/")},
            rules=[NotifyRule(receivers=["hook"])],
        ),
    )
    notifier = Notifier(cfg, None, threading.Event())  # its workers are not started: nothing is sent
    outbox = Outbox(cfg.notify_state_path())
    try:
        waiting, done = _ev("j1", "WAITING_RESOLVE", 5, 10.0), _ev("j1", "DONE", 6, 11.0)
        notifier._handle(outbox, done)  # the first broker lacked seq 5: seq 6 came first
        notifier._handle(outbox, done)  # the second broker's copy of seq 6
        notifier._handle(outbox, waiting)  # seq 5, late, from the second broker
        assert outbox.job("j1") == ("DONE", 11.0)
        assert outbox.counts() == {("hook", "pending"): 1}
        assert outbox.seen(waiting.stamp) and outbox.seen(done.stamp)
        notifier._handle(outbox, waiting)  # read again after a crash: still nothing
        assert outbox.counts() == {("hook", "pending"): 1}
        pending = outbox.next_pending("hook")
        assert pending is not None and pending.notice.state == "DONE"
    finally:
        outbox.close()
