"""`p4bus notify`: the loop that reads job events and records notices, and the workers that
deliver them (package docstring). Stops on SIGINT/SIGTERM; a SIGKILL at any point loses
nothing, and repeats at most the one delivery that was under way (docs/reliability.md)."""

from __future__ import annotations

import threading
import time

import zmq

from broker.client import ReplayError, ReplayTimeout
from broker.journals import Endpoints, Mark
from common import auth, ids, lifecycle, logs, metrics
from common.auth import Security
from common.config import Config, read_password_file
from p4bus.notify import backoff, message, rules
from p4bus.notify.metrics import NotifyMetrics
from p4bus.notify.outbox import Outbox
from p4bus.notify.senders import sender
from p4bus.notify.source import JobEvent, JobEvents
from p4bus.notify.worker import Worker

log = logs.get("notify")

# Read the journal at least this often while no live event comes (a lost live copy waits no longer).
IDLE_S = 1.0
PRUNE_EVERY_S = 3600.0
# A broker met with no cursor of its own is read from a little before the newest job state
# recorded (a broker added to the configuration, the one-broker state migrated: the events a
# reader was handling then may not all have been recorded yet), or, on a first start, from a
# little before it (events from before the notifier existed are history, not news; the margin
# is for a broker's clock behind ours).
NEW_BROKER_MARGIN_S = 300.0
FIRST_START_MARGIN_S = 10.0


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
        self.cursors: dict[str, Mark] = {}  # as last written to the state file

    def run(self) -> None:
        outbox = Outbox(self.path)
        for w in self.workers.values():
            w.start()
        ctx = zmq.Context()
        brokers = [Endpoints(b.xpub, b.replay) for b in self.cfg.bus_brokers()]
        source = JobEvents(ctx, brokers, self.security)
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
        self._start(outbox, source)
        failures = 0
        pruned = 0.0
        while not self.stop.is_set():
            self.metrics.health.tick()
            try:
                self._read(outbox, source)
                failures = 0
            except (ReplayTimeout, ReplayError) as exc:
                failures += 1
                wait = backoff.delay_s(failures, IDLE_S, 30.0)
                log.warning("notify.broker_unavailable", error=str(exc), retry_in_s=wait)
                self.stop.wait(wait)
                continue
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                pruned = time.monotonic()
                horizon = time.time() - self.cfg.notify.keep_sent_s
                outbox.prune(horizon)
                source.history_before(horizon)
            source.wait(IDLE_S)

    def _start(self, outbox: Outbox, source: JobEvents) -> None:
        """Where to read each broker's journal from (JobEvents.start): the remembered cursors,
        after migrating the one cursor of a notifier that read only the first broker."""
        outbox.take_legacy_cursor(source.names[0])
        cursors = outbox.cursors()
        last = outbox.last_update()
        since = time.time() - FIRST_START_MARGIN_S if last is None else last - NEW_BROKER_MARGIN_S
        source.start(cursors, time.time() - self.cfg.notify.keep_sent_s, since)
        log.info("notify.cursors", cursors=cursors, new_brokers=[n for n in source.names if n not in cursors])

    def _read(self, outbox: Outbox, source: JobEvents) -> None:
        for got in source.read():
            self._handle(outbox, got)
        cursors = source.commit()
        if cursors != self.cursors:
            outbox.set_cursors(cursors)
            self.cursors = cursors

    def _handle(self, outbox: Outbox, got: JobEvent) -> None:
        """One copy of a job event: nothing if its stamp was handled (another broker's copy, or
        read again after a crash); no state change nor notice if the job has a newer state (a
        copy one broker lacked, delivered late by another: the job has moved on)."""
        if outbox.seen(got.stamp):
            return
        ev = got.event
        known = outbox.job(ev.job_id)
        if known is not None and ev.ts < known[1]:
            log.info("notify.superseded", job_id=ev.job_id, state=ev.state, now=known[0])
            outbox.record(got.stamp, None, ev.job_id, ev.state, [])
            return
        kind = rules.news(known[0] if known else None, ev.state)
        notices: list[tuple[str, message.Notice]] = []
        if kind is not None:
            n = message.notice(ev, kind, self.web_url)
            notices = [(name, n) for name in rules.receivers_for(self.cfg.notify.rules, n.workspace, kind)]
        if outbox.record(got.stamp, ev.ts, ev.job_id, ev.state, notices):
            log.info(
                "notify.recorded",
                job_id=ev.job_id,
                kind=kind,
                key=message.event_key(ev),
                receivers=[r for r, _ in notices],
            )
        for name, _ in notices:
            self.workers[name].wake.set()
