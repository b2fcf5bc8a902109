"""Standby orchestrators: answer reads from the shared store until the lease is theirs.

Several orchestrator processes may run on one store (docs/design.md, *Standby orchestrators*).
The one holding the lease (orchestrator/lease.py) is active: it subscribes to events, dispatches
and answers every request. The others are standbys: they answer the requests that change
nothing (``P.ORCHESTRATOR_READS``) from the store and refuse the rest with code ``standby``,
and every RETRY_S they try the lease. The one that gets it runs the start-up recovery (every
agent with commands in flight is asked about them, which is what makes the events a standby
never saw harmless) and is active from then on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from common import logs, zmqutil
from common import protocol as P
from orchestrator.engine import JobError
from orchestrator.lease import Lease

log = logs.get("orchestrator")

ACTIVE = "active"
STANDBY = "standby"
# How often a standby tries the lease: half of it is the takeover time's share of waiting.
RETRY_S = 0.5
# How often the active one asks the store that it still holds the lease.
CHECK_S = 1.0


class Role:
    """Whether this orchestrator is active, and the lease that makes it so."""

    def __init__(self, lease: Lease, source: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.source = source
        self.clock = clock
        self.active = False
        self._checked = 0.0

    @property
    def name(self) -> str:
        return ACTIVE if self.active else STANDBY

    def refuse_writes(self, msg: P.OrchestratorRequest) -> None:
        """A standby changes nothing: JobError (code ``standby``) unless ``msg`` is a read."""
        if not self.active and not isinstance(msg, P.ORCHESTRATOR_READS):
            raise JobError(
                f"{self.source} is a standby orchestrator and does not take {msg.__struct_config__.tag} "
                "requests: send it to the active one (list every orchestrator in the client's "
                "`orchestrators` setting and the client finds it)",
                code="standby",
            )

    def await_lease(
        self,
        api: zmq.Socket,
        on_api_frames: Callable[[list[zmq.Frame]], None],
        stop: threading.Event,
        tick: Callable[[], None] = lambda: None,
    ) -> bool:
        """Serve ``api`` as a standby until the lease is taken (True) or ``stop`` is set (False);
        ``tick`` on every turn (a standby that serves its reads is healthy)."""
        if self._take():
            return True
        log.info("orchestrator.standby", lease=self.lease.what, retry_s=RETRY_S)
        next_try = self.clock() + RETRY_S
        while not stop.is_set():
            tick()
            left = next_try - self.clock()
            if left <= 0:
                if self._take():
                    return True
                next_try = self.clock() + RETRY_S
                continue
            if api.poll(max(1, int(left * 1000))):
                zmqutil.drain(api, on_api_frames, 1000, copy=False)
        return False

    def _take(self) -> bool:
        if not self.lease.try_acquire():
            return False
        self.active = True
        self._checked = self.clock()
        log.info("orchestrator.active", lease=self.lease.what)
        return True

    def check(self) -> None:
        """The active one's fence, once per CHECK_S: raises LeaseLost if the lease is gone."""
        now = self.clock()
        if now - self._checked >= CHECK_S:
            self._checked = now
            self.lease.check()
