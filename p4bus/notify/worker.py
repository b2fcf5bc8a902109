"""One thread per receiver: deliver its pending notices oldest first, and while it fails, wait
(backoff.py) and try the same notice again. A receiver that hangs holds only its own thread,
for at most its timeout per try, so the others are never delayed by it."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import logs
from p4bus.notify import backoff
from p4bus.notify.outbox import REJECTED, Outbox
from p4bus.notify.senders import Rejected, Send

log = logs.get("notify")

# With nothing pending, look at the outbox again at least this often (the reader also wakes us).
IDLE_S = 5.0


class Worker(threading.Thread):
    def __init__(
        self,
        receiver: str,
        send: Send,
        state: Path,
        stop: threading.Event,
        retry_initial_s: float,
        retry_max_s: float,
        jitter: Callable[[], float] = lambda: random.uniform(-1, 1),
    ) -> None:
        super().__init__(name=f"notify-{receiver}", daemon=True)
        self.receiver = receiver
        self.send = send
        self.state = state
        self.stop = stop
        self.wake = threading.Event()  # set when notices were recorded, and at stop
        self.retry = (retry_initial_s, retry_max_s)
        self.jitter = jitter
        self.error: Exception | None = None
        self.counts: Counter[str] = Counter()  # sent, failed, rejected (p4bus/notify/metrics.py)

    def run(self) -> None:
        try:
            self._deliver()
        except Exception as exc:
            # Not a receiver's failure (those are retried) but our own, e.g. the state file:
            # stop the whole notifier with an error, so that its supervisor starts it again,
            # rather than go on with a receiver nobody delivers to.
            self.error = exc
            log.exception("notify.worker_failed", receiver=self.receiver)
            self.stop.set()

    def _deliver(self) -> None:
        outbox = Outbox(self.state)
        failures = 0  # in a row
        try:
            while not self.stop.is_set():
                self.wake.clear()
                pending = outbox.next_pending(self.receiver)
                if pending is None:
                    self.wake.wait(IDLE_S)
                    continue
                started = time.monotonic()
                try:
                    self.send(pending.notice)
                except Rejected as exc:
                    outbox.done(self.receiver, pending.key, REJECTED, str(exc))
                    self.counts["rejected"] += 1
                    log.error(
                        "notify.rejected",
                        receiver=self.receiver,
                        key=pending.key,
                        job_id=pending.notice.job_id,
                        error=str(exc),
                    )
                    failures = 0
                    continue
                except Exception as exc:  # any failure of a receiver is retried, never fatal
                    failures += 1
                    error = f"{type(exc).__name__}: {exc}"
                    outbox.failed(self.receiver, pending.key, error)
                    self.counts["failed"] += 1
                    wait = backoff.delay_s(failures, *self.retry, self.jitter())
                    log.warning(
                        "notify.retry",
                        receiver=self.receiver,
                        key=pending.key,
                        job_id=pending.notice.job_id,
                        failures=failures,
                        retry_in_s=round(wait, 2),
                        error=error,
                    )
                    self.stop.wait(wait)  # not woken by new notices: the receiver is down
                    continue
                outbox.done(self.receiver, pending.key)
                self.counts["sent"] += 1
                failures = 0
                log.info(
                    "notify.sent",
                    receiver=self.receiver,
                    key=pending.key,
                    job_id=pending.notice.job_id,
                    kind=pending.notice.kind,
                    attempts=pending.attempts + 1,
                    ms=round((time.monotonic() - started) * 1000, 1),
                )
        finally:
            outbox.close()
