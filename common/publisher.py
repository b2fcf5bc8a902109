"""Publishing events: stamp each with (source, epoch, seq) and send it without ever blocking.

Every publisher (agent, master, orchestrator) goes through this one class, so stamping stays
hole-free per topic kind and a full PUB queue never stalls a service loop: past the high-water
mark ZeroMQ drops the event, and the publisher's own state (spool, registry, store) stays the
truth that subscribers reconcile against.

A seq hole shows a loss only once the same publisher sends again, so a lost *tail* would stay
invisible while the publisher is quiet. Every ``beacon_s`` a thread of this class therefore
publishes a ``beacon`` with the last seq of every kind (docs/protocol.md, *Beacons*). It sends
on the same socket as the events, under the same lock as stamping, so a beacon never leaves
before an event it counts: a subscriber that sees ``last`` above what it received really lost
the difference.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

import zmq

from common import protocol as P
from common import topics
from common.sequence import Stamper

E = TypeVar("E", bound=P.EventBase)


class Publisher:
    """One PUB socket and one Stamper. ``publish`` from the thread that owns the publisher; the
    beacon thread shares the socket only under the lock, and ``close`` stops it first."""

    def __init__(self, sock: zmq.Socket, source: str, epoch: str, beacon_s: float = 0.0) -> None:
        self.sock = sock
        self.stamper = Stamper(source, epoch)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beacons: threading.Thread | None = None
        if beacon_s > 0:
            self._beacons = threading.Thread(target=self._beacon_loop, args=(beacon_s,), name="beacon", daemon=True)
            self._beacons.start()

    def publish(self, cls: type[E], topic: str, **fields: Any) -> E:
        with self._lock:
            ev = cls(**self.stamper.stamp(topic), **fields)
            self._send(ev)
        return ev

    def beacon(self) -> P.Beacon:
        """Publish the last seq of every kind now (the beacon thread calls this every beacon_s)."""
        with self._lock:
            ev = P.Beacon(**self.stamper.stamp(topics.beacon(self.stamper.source)), last=self.stamper.last())
            self._send(ev)
        return ev

    def close(self, linger: int | None = None) -> None:
        self._stop.set()
        if self._beacons is not None:
            self._beacons.join()
        self.sock.close(linger=linger)

    def _send(self, ev: P.EventBase) -> None:
        try:
            self.sock.send_multipart(P.encode_event(ev), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # a notification lost here shows as a seq hole (or in the next beacon) to subscribers

    def _beacon_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.beacon()
