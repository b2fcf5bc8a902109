"""The job events, read from every broker's journal with their journal ids.

The notifier must say which events it has handled in a form that outlives it: a journal id per
broker (journal ids differ from broker to broker). Live frames carry none, so the journals are
read (broker/journals.py: replay pages after each broker's cursor; a broker that does not answer
is skipped until its live stream delivers again) and the live subscriptions serve only to know
when to read again: a live event arrives, the next replay contains it (a broker answers a
replay only once its journal holds every event it had accepted when the request came). While
nothing comes live the reader reads the journals every second anyway (service.py), so an event
whose live copies were lost waits no longer than that. Each event comes once per broker that
journalled it; service.py drops the copies by stamp.
"""

from __future__ import annotations

from typing import NamedTuple

import zmq

from broker.journals import Endpoints, Journals, Mark
from common import logs, roles, topics
from common import protocol as P
from common.auth import Security
from p4bus.notify.outbox import Stamp

log = logs.get("notify")

PREFIX = topics.JOB + "."


class JobEvent(NamedTuple):
    stamp: Stamp
    event: P.JobChanged


class JobEvents:
    def __init__(
        self, ctx: zmq.Context, brokers: list[Endpoints], security: Security | None, timeout_s: float = 10.0
    ) -> None:
        self.security = security
        self.refused: dict[str, int] = {}  # publisher key -> job events not believed
        self.journals = Journals.connect(ctx, brokers, security, [PREFIX], timeout_s, on_down=_down)
        self.names = self.journals.names()

    def close(self) -> None:
        self.journals.close()

    def start(self, cursors: dict[str, Mark], history_before: float, new_broker_since: float) -> None:
        """Read each broker after its cursor; one without a cursor (a first start, a broker
        added, the migration of one-broker state, or one that never answered) all that it
        received since ``new_broker_since`` (the copies already handled are dropped by stamp).
        What the brokers received before ``history_before`` is not read (its stamps are
        forgotten)."""
        for i, name in enumerate(self.names):
            self.journals.start_at(i, cursors.get(name, Mark(0)), 0.0 if name in cursors else new_broker_since)
        self.journals.history_before(history_before)

    def read(self) -> list[JobEvent]:
        """Every job change the orchestrator published that a broker journalled after its
        cursor, copies included, in publish order; ``commit()`` once they are handled."""
        out = []
        for copy in self.journals.read():
            if copy.got is not None and (ev := self._trusted(copy.got)) is not None:
                out.append(JobEvent(Stamp(copy.got.publisher, ev.source, ev.epoch, ev.seq), ev))
        return out

    def commit(self) -> dict[str, Mark]:
        """Every event of the last read was handled: where each broker's reading stands now."""
        self.journals.commit()
        marks = {name: self.journals.mark(i) for i, name in enumerate(self.names)}
        return {name: m for name, m in marks.items() if m is not None}

    def history_before(self, ts: float) -> None:
        self.journals.history_before(ts)

    def wait(self, timeout_s: float) -> bool:
        """Until a live job event arrives (True) or ``timeout_s`` passes."""
        return self.journals.wait(timeout_s)

    def _trusted(self, got: P.Delivered) -> P.JobChanged | None:
        ev, publisher = got
        if not isinstance(ev, P.JobChanged):
            return None
        if self.security is not None and self.security.role_of(publisher) != roles.ORCHESTRATOR:
            # Only the orchestrator's key speaks for jobs (docs/security.md); said once per key,
            # so a forger cannot flood the log.
            if publisher not in self.refused:
                log.warning("notify.untrusted_event", key=publisher, topic=ev.topic, source=ev.source)
            self.refused[publisher] = self.refused.get(publisher, 0) + 1
            return None
        return ev


def _down(broker: str, why: str) -> None:
    log.warning("notify.broker_unavailable", broker=broker, error=why)
