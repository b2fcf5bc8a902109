"""The XSUB/XPUB proxy: forwards subscriptions upstream and events downstream, journalling each.

Not ``zmq.proxy``: every event must also reach the journal, malformed ones must be dropped, and
each is stamped with who published it. The loop drains each readable socket in a batch
(NOBLOCK until EAGAIN, bounded per wakeup so subscriptions are never starved) and hands the
journal one list per batch.

Publishers send ``[topic, body]``; subscribers get ``[topic, body, publisher]``, the publisher
being the key name ZAP authenticated the sending connection by (the frame's User-Id property),
which the body cannot forge. A publisher that sends three frames itself is dropped like any
malformed event, so it cannot name a publisher of its choosing. On an insecure bus (no CURVE,
so no User-Id) the publisher is "".

Beacons (a publisher's last seq per kind, every few seconds) are forwarded but not journalled:
they describe the live stream, not its history. A replay already returns every journalled event
of a publisher, so a journalled beacon would tell a replaying reader nothing, while one per
publisher every two seconds would soon outnumber the real events and push them out of a journal
bounded by size. They are counted apart (``beacons``), so ``events_in``, the replay barrier's
count, stays the number of events the journal will hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import msgspec
import zmq

from broker.journal_schema import Row
from broker.journal_writer import JournalWriter
from common import limits, logs, protocol, roles, topics, zmqutil
from common.auth import Security

log = logs.get("broker.proxy")

# Subscriptions handled per wakeup before the events get a turn.
DRAIN_MAX = 2000
POLL_MS = 100
_NOBLOCK = int(zmq.NOBLOCK)
_BEACON_PREFIX = topics.BEACON + "."
_SNDMORE = int(zmq.SNDMORE)

EVENT_TAGS = frozenset(cls.__struct_config__.tag for cls in get_args(protocol.Event))
BEACON_TAG = protocol.Beacon.__struct_config__.tag


class EventHead(msgspec.Struct):
    """Just the envelope of an event body. Decoding into this skips the payload (a 256 KiB
    ``data`` field costs nothing), which keeps validation cheap at hundreds of MB/s."""

    t: str
    topic: str
    source: str
    epoch: str
    seq: int


# A decoder of its own rather than protocol.decode: the body is a zmq frame's buffer (no copy),
# and the proxy needs only "valid or not", not protocol.decode's classified errors.
_decode_head = msgspec.msgpack.Decoder(EventHead).decode


@dataclass
class ProxyCounters:
    events_in: int = 0  # valid events received (counted before forwarding: the replay barrier)
    events_out: int = 0  # handed to XPUB
    bad_frames: int = 0  # malformed events and subscription frames, dropped
    unauthenticated: int = 0  # events without a User-Id on a CURVE socket (should stay 0), dropped
    beacons: int = 0  # beacons forwarded (live only: neither journalled nor in events_in/out)


class Proxy:
    def __init__(
        self,
        ctx: zmq.Context,
        xsub_endpoint: str,
        xpub_endpoint: str,
        journal: JournalWriter,
        security: Security | None,
    ) -> None:
        self.counters = ProxyCounters()
        self.journal = journal
        self.xsub = zmqutil.proxy_end(ctx, zmq.XSUB, xsub_endpoint, security, roles.BROKER_PUBLISH)
        try:
            self.xpub = zmqutil.proxy_end(ctx, zmq.XPUB, xpub_endpoint, security, roles.BROKER_SUBSCRIBE)
        except zmqutil.BindError:
            self.xsub.close()
            raise
        # The journal wants every event, whoever subscribes downstream: subscribe to all.
        # XSUB reference-counts subscriptions, so a subscriber's "" unsubscribe cannot cancel it.
        self.xsub.send(b"\x01")
        # Without a security mechanism libzmq attaches no User-Id at all (asking raises).
        self.authenticated = self.xsub.getsockopt(zmq.MECHANISM) != zmq.NULL
        self._publisher_frames: dict[str, bytes] = {}

    def close(self) -> None:
        self.xsub.close()
        self.xpub.close()

    def run(self, stop: threading.Event, tick: Callable[[], None] = lambda: None) -> None:
        """Forward until ``stop`` is set; ``tick`` is called at every wake-up (the health check)."""
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        while not stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if self.xpub in ready:
                self._forward_subscriptions()
            if self.xsub in ready:
                self._forward_events()
            tick()

    def _forward_subscriptions(self) -> None:
        for _ in range(DRAIN_MAX):
            try:
                frames = self.xpub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 1 and frames[0][:1] in (b"\x00", b"\x01"):
                self.xsub.send(frames[0])
            else:
                self.counters.bad_frames += 1

    def _forward_events(self) -> None:
        # Frame by frame with int flags rather than recv_multipart/send_multipart: those cost
        # ~3x more per event in pyzmq (RCVMORE lookups and enum flag arithmetic per frame).
        # copy=False: bodies (up to 256 KiB) go to XPUB and SQLite without a Python copy.
        recv, send = self.xsub.recv, self.xpub.send
        rows: list[Row] = []
        size = 0
        c = self.counters
        now = time.time()
        for _ in range(limits.BROKER_BATCH_EVENTS):
            if size >= limits.BROKER_BATCH_BYTES:
                break  # the rest waits in the XSUB queue, bounded by its HWM
            try:
                frames = [recv(_NOBLOCK, copy=False)]
            except zmq.Again:
                break
            while frames[-1].more:  # a message arrives whole: the other frames are already here
                frames.append(recv(0, copy=False))
            publisher = self._publisher(frames[0])
            if publisher is None:
                c.unauthenticated += 1
                continue
            row = self._validate(frames, now, publisher)
            if row is None:
                c.bad_frames += 1
                continue
            beacon = row.topic.startswith(_BEACON_PREFIX)  # _validate: exactly the beacons
            if not beacon:
                c.events_in += 1
            send(frames[0], _SNDMORE, copy=False)
            send(frames[1], _SNDMORE, copy=False)
            send(self._publisher_frame(publisher), 0)
            if beacon:
                c.beacons += 1
                continue
            c.events_out += 1
            rows.append(row)
            size += len(row.body)
        if rows:
            self.journal.submit(rows)

    def _publisher(self, frame: zmq.Frame) -> str | None:
        """The key name the connection this frame came in on was authenticated by; "" on an
        insecure bus; None if a secure socket somehow delivered it without one."""
        if not self.authenticated:
            return ""
        try:
            return str(frame.get("User-Id")) or None
        except zmq.ZMQError:
            return None

    def _publisher_frame(self, publisher: str) -> bytes:
        # One bytes object per publisher, not an encode per event.
        frame = self._publisher_frames.get(publisher)
        if frame is None:
            frame = self._publisher_frames[publisher] = publisher.encode()
        return frame

    @staticmethod
    def _validate(frames: list[zmq.Frame], now: float, publisher: str) -> Row | None:
        """The journal row for a well-formed event, None for anything else."""
        if len(frames) != 2:
            return None
        body = frames[1].buffer
        try:
            head = _decode_head(body)
            topic = frames[0].bytes.decode()
        except (msgspec.DecodeError, ValueError):  # ValueError: invalid UTF-8, in the body or the topic
            return None
        if head.t not in EVENT_TAGS or head.topic != topic:
            return None
        if (head.t == BEACON_TAG) != topic.startswith(_BEACON_PREFIX):
            return None  # a beacon only on a beacon topic, and nothing else there (never journalled)
        return Row(now, topic, head.source, head.epoch, head.seq, body, publisher)
