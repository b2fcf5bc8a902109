"""Publishing events: stamp each with (source, epoch, seq) and send it without ever blocking.

Every publisher (agent, master, orchestrator) goes through this one class, so stamping stays
hole-free per topic kind and a full PUB queue never stalls a service loop: past the high-water
mark ZeroMQ drops the event, and the publisher's own state (spool, registry, store) stays the
truth that subscribers reconcile against.
"""

from __future__ import annotations

from typing import Any, TypeVar

import zmq

from common import protocol as P
from common.sequence import Stamper

E = TypeVar("E", bound=P.EventBase)


class Publisher:
    """One PUB socket and one Stamper; use from the thread that owns the socket."""

    def __init__(self, sock: zmq.Socket, source: str, epoch: str) -> None:
        self.sock = sock
        self.stamper = Stamper(source, epoch)

    def publish(self, cls: type[E], topic: str, **fields: Any) -> E:
        ev = cls(**self.stamper.stamp(topic), **fields)
        try:
            self.sock.send_multipart(P.encode_event(ev), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # a notification lost here shows as a seq hole to subscribers
        return ev

    def close(self, linger: int | None = None) -> None:
        self.sock.close(linger=linger)
