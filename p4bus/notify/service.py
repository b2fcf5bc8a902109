"""`p4bus notify`: the loop that reads job events and records notices, and the workers that
deliver them (package docstring). Stops on SIGINT/SIGTERM; a SIGKILL at any point loses
nothing, and repeats at most the one delivery that was under way (docs/reliability.md)."""

from __future__ import annotations

import threading
import time

import zmq

from broker.client import ReplayError, ReplayTimeout
from common import auth, ids, lifecycle, logs, metrics
from common import protocol as P
from common.auth import Security
from common.config import Config, read_password_file
from p4bus.notify import backoff, message, rules
from p4bus.notify.metrics import NotifyMetrics
from p4bus.notify.outbox import Outbox
from p4bus.notify.senders import sender
from p4bus.notify.source import JobEvents
from p4bus.notify.worker import Worker

log = logs.get("notify")

# Read the journal at least this often while no live event comes (a lost live copy waits no longer).
IDLE_S = 1.0
PRUNE_EVERY_S = 3600.0


def main(cfg: Config) -> None:
    check(cfg)
    security = auth.for_service(cfg, "notify", "notify")
    notifier = Notifier(cfg, security, lifecycle.stop_on_signals())
    metrics.serve(cfg, "notify", notifier.metrics)
    notifier.run()


def check(cfg: Config) -> None:
    """ConfigError for settings that cannot work, before anything starts."""
    rules.check(cfg.notify)
    for name, rcv in cfg.notify.receivers.items():
        if rcv.password_file:
            read_password_file(rcv.password_file)  # exists, ours, 0600
        rules.check_url_file(f"notify.receivers.{name}", rcv)
    if cfg.notify.receivers and not cfg.notify.rules:
        log.warning("notify.no_rules", detail="receivers are configured but no [[notify.rules]] sends them anything")


class Notifier:
    def __init__(self, cfg: Config, security: Security | None, stop: threading.Event) -> None:
        self.cfg = cfg
        self.security = security
        self.stop = stop
        self.web_url = cfg.notify_web_url()
        self.path = cfg.notify_state_path()
        self.workers = {
            name: Worker(name, sender(rcv), self.path, stop, cfg.notify.retry_initial_s, cfg.notify.retry_max_s)
            for name, rcv in cfg.notify.receivers.items()
        }
        self.metrics = NotifyMetrics(f"notify-{ids.host_id()}", self.workers)

    def run(self) -> None:
        outbox = Outbox(self.path)
        for w in self.workers.values():
            w.start()
        ctx = zmq.Context()
        source = JobEvents(ctx, self.cfg.endpoint("broker_xpub"), self.cfg.endpoint("broker_replay"), self.security)
        log.info("notify.ready", receivers=sorted(self.workers), state=str(self.path), web_url=self.web_url)
        try:
            self._loop(outbox, source)
        finally:
            for w in self.workers.values():
                w.wake.set()
            for w in self.workers.values():
                w.join(timeout=2.0)  # a send under way may hang up to its timeout: it is a daemon
            source.close()
            ctx.term()
            outbox.close()
            log.info("notify.stopped")
        failed = [w.receiver for w in self.workers.values() if w.error is not None]
        if failed:
            raise RuntimeError(f"the delivery worker of {', '.join(failed)} failed (see the log); restart the notifier")

    def _loop(self, outbox: Outbox, source: JobEvents) -> None:
        cursor: int | None = None
        failures = 0
        pruned = 0.0
        while not self.stop.is_set():
            self.metrics.health.tick()
            try:
                if cursor is None:
                    cursor = self._start_cursor(outbox, source)
                cursor = self._read(outbox, source, cursor)
                failures = 0
            except (ReplayTimeout, ReplayError) as exc:
                failures += 1
                wait = backoff.delay_s(failures, IDLE_S, 30.0)
                log.warning("notify.broker_unavailable", error=str(exc), retry_in_s=wait)
                cursor = None  # the broker may come back with another journal: check again
                self.stop.wait(wait)
                continue
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                pruned = time.monotonic()
                outbox.prune(time.time() - self.cfg.notify.keep_sent_s)
            source.wait(IDLE_S)

    def _start_cursor(self, outbox: Outbox, source: JobEvents) -> int:
        """Where to read from: the remembered journal id; the head on a first start (events
        from before the notifier existed are history, not news); 0 if the journal is younger
        than the cursor (a new journal file: all of its events are new)."""
        head = source.head()
        cursor = outbox.cursor()
        if cursor is None:
            outbox.set_cursor(head)
            log.info("notify.first_start", journal_id=head)
            return head
        if head < cursor:
            log.warning("notify.journal_reset", cursor=cursor, head=head)
            outbox.set_cursor(0)
            return 0
        return cursor

    def _read(self, outbox: Outbox, source: JobEvents, cursor: int) -> int:
        for journal_id, ev in source.after(cursor):
            if ev is None:
                outbox.set_cursor(journal_id)
            else:
                self._handle(outbox, journal_id, ev)
            cursor = journal_id
        return cursor

    def _handle(self, outbox: Outbox, journal_id: int, ev: P.JobChanged) -> None:
        kind = rules.news(outbox.job_state(ev.job_id), ev.state)
        notices: list[tuple[str, message.Notice]] = []
        if kind is not None:
            n = message.notice(ev, kind, self.web_url)
            notices = [(name, n) for name in rules.receivers_for(self.cfg.notify.rules, n.workspace, kind)]
        if outbox.record(journal_id, ev.job_id, ev.state, notices):
            log.info(
                "notify.recorded", job_id=ev.job_id, kind=kind, journal_id=journal_id, receivers=[r for r, _ in notices]
            )
        for name, _ in notices:
            self.workers[name].wake.set()
