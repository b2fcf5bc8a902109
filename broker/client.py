"""Client side of the broker: replay pages, and history spliced onto the live stream.

Splice algorithm (``history_then_live``), for any subscriber that wants "everything, then live":

1. Subscribe first (SUB on the broker's XPUB, one subscription per prefix), so nothing published
   from now on can fall between history and live.
2. Replay the journal for each prefix, page after page, until ``more`` is False, and yield those
   events (merged by journal id, each prefix read up to the same horizon: the journal head when
   the catch-up began). A prefix's cursor then moves to that horizon.
3. Read live events. The first live event of a prefix proves that subscription is active at the
   broker; before yielding it, replay again from the cursors ("catch-up"). The broker answers a
   replay only once the journal holds every event it had accepted when the request arrived
   (journalling is asynchronous), so the catch-up contains everything published before the
   subscription became active, up to and including that live event. While a prefix has not
   seen a live event yet, catch up whenever the stream is idle (backing off to 2 s), so a quiet
   topic's events published during subscription set-up are not held back.
4. Deduplicate by (publisher, source, epoch, kind, seq): per (source, kind, epoch) ``seq`` grows
   by one per event and the broker forwards and journals in the same order, so an event is new
   exactly when its seq is above the highest yielded one. The authenticated publisher (the
   broker's third frame, "" on an insecure bus) is part of the key, so an event forged under
   another publisher's source, with a huge seq, cannot make that publisher's real events look
   like duplicates.
5. A live hole (seq jumps, e.g. a subscriber queue overflowed) triggers a catch-up before the
   event is yielded -- but only when the subscription covers the whole topic kind (``""``,
   ``"log."``...): seq counts per kind, so under a narrower prefix (``log.JOB.``) jumps are
   normal. Such subscribers check continuity themselves (log chunks carry byte offsets; a
   missing range is fetched from the agent's spool).

Events come out once each and in broker order; only an event the live stream lost *after* its
prefix was confirmed and that no later hole reveals can be missed (see 5).
"""

from __future__ import annotations

import heapq
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

import zmq

from common import ids, protocol, roles, topics, zmqutil
from common.auth import Security

PAGE_LIMIT = 1000
IDLE_MAX_S = 2.0
# A replay "after" no id can exceed (SQLite's largest integer): an empty page carrying head_id.
_BEYOND_HEAD = (1 << 63) - 1

R = TypeVar("R", bound=protocol.Base)


class ReplayError(RuntimeError):
    """The broker answered with an ErrorReply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ReplayTimeout(TimeoutError):
    pass


class ReplayClient:
    """Requests to the broker's replay ROUTER over one DEALER (not thread-safe)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, security: Security | None, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.sock = zmqutil.dealer(ctx, endpoint, security, roles.BROKER)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ReplayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, msg: protocol.Request[R]) -> R:
        """Send and wait for the reply with the same req_id (late replies to earlier, timed-out
        requests are skipped). Raises ReplayError (also for a reply of the wrong type) or
        ReplayTimeout."""
        self.sock.send(protocol.encode(msg))
        deadline_ms = int(self.timeout_s * 1000)
        while self.sock.poll(deadline_ms):
            reply: protocol.Reply = protocol.decode(self.sock.recv(), protocol.Reply)
            if reply.req_id != msg.req_id:
                continue
            if isinstance(reply, protocol.ErrorReply):
                raise ReplayError(reply.code, reply.message)
            try:
                return protocol.reply_to(msg, reply)
            except protocol.ProtocolError as exc:
                raise ReplayError(exc.code, exc.message) from None
        raise ReplayTimeout(f"no reply from the broker's replay endpoint {self.endpoint} within {self.timeout_s}s")

    def page(
        self, prefix: str = "", after: int = 0, since_ts: float = 0.0, limit: int = PAGE_LIMIT
    ) -> protocol.ReplayPage:
        return self.request(
            protocol.Replay(req_id=ids.new_id(), prefix=prefix, after=after, since_ts=since_ts, limit=limit)
        )

    def pages(self, prefix: str = "", after: int = 0, since_ts: float = 0.0) -> Iterator[list[tuple[int, str, bytes]]]:
        """Every journalled event of ``prefix`` after id ``after`` (and at/after ``since_ts``), as
        non-empty pages of (journal id, topic, body) -- body is the published frame, exactly."""
        while True:
            page = self.page(prefix, after, since_ts)
            if page.events:
                yield page.events
            if not page.more:
                return
            after = page.last_id

    def stats(self) -> dict[str, int]:
        return self.request(protocol.Stats(req_id=ids.new_id())).counters

    def ping(self) -> protocol.Pong:
        return self.request(protocol.Ping(req_id=ids.new_id()))

    @staticmethod
    def history_then_live(
        ctx: zmq.Context,
        xpub_endpoint: str,
        replay_endpoint: str,
        security: Security | None,
        prefixes: Iterable[str] = ("",),
        since_ts: float = 0.0,
        idle_s: float = 0.2,
        timeout_s: float = 10.0,
    ) -> Generator[protocol.Delivered, None, None]:
        """Journal history, then live events, without gap or duplicate (module docstring), each
        with its authenticated publisher.

        Runs until the caller stops iterating (``close()`` the generator to release sockets).
        """
        splice = _Splice(
            ReplayClient(ctx, replay_endpoint, security, timeout_s), normalize_prefixes(prefixes), since_ts
        )
        sub = zmqutil.sub(ctx, xpub_endpoint, security, splice.prefixes)
        try:
            yield from splice.catch_up()
            wait_s = idle_s
            while True:
                if not sub.poll(int(wait_s * 1000)):
                    if splice.unconfirmed:
                        yield from splice.catch_up()
                        wait_s = min(wait_s * 2, IDLE_MAX_S)
                    continue
                try:
                    got = protocol.decode_delivered(sub.recv_multipart())
                except protocol.ProtocolError:
                    continue  # the broker drops malformed events; nothing else can send here
                if splice.needs_catch_up(got):
                    yield from splice.catch_up()
                if splice.admit(got):
                    yield got
        finally:
            sub.close()
            splice.client.close()


history_then_live = ReplayClient.history_then_live


def normalize_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Drop prefixes covered by a shorter one, so the per-prefix journal streams are disjoint."""
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not any(p.startswith(q) for q in out):
            out.append(p)
    return out


class _Splice:
    """State of one history_then_live: per-prefix journal cursors and the dedup high-water marks."""

    def __init__(self, client: ReplayClient, prefixes: list[str], since_ts: float) -> None:
        self.client = client
        self.prefixes = prefixes
        self.since_ts = since_ts
        self.cursor = dict.fromkeys(prefixes, 0)
        self.unconfirmed = set(prefixes)  # no live event seen yet: subscription maybe not active
        self.last_seq: dict[tuple[str, str, str, str], int] = {}

    def catch_up(self) -> Iterator[protocol.Delivered]:
        """Yield new journalled events after the cursors, all prefixes merged in journal order.

        Every prefix is read up to one horizon, the journal head when the catch-up starts; else
        a prefix read later could yield an event newer than ones another prefix still lacks.
        """
        horizon = self.client.page(self.prefixes[0], after=_BEYOND_HEAD).head_id
        for _id, topic, body, publisher in heapq.merge(*(self._stream(p, horizon) for p in self.prefixes)):
            try:
                got = protocol.decode_delivered([topic.encode(), body, publisher.encode()])
            except protocol.ProtocolError:
                continue  # only well-formed events are journalled; be lenient anyway
            if self.admit(got):
                yield got

    def _stream(self, prefix: str, horizon: int) -> Iterator[tuple[int, str, bytes, str]]:
        while self.cursor[prefix] < horizon:
            page = self.client.page(prefix, self.cursor[prefix], self.since_ts)
            # A broker that predates publishers sends none: "", as on an insecure bus.
            publishers = page.publishers or [""] * len(page.events)
            if len(publishers) != len(page.events):
                raise ReplayError(
                    "bad_reply",
                    f"replay page has {len(page.events)} events but {len(publishers)} publishers",
                )
            yield from ((i, t, b, p) for (i, t, b), p in zip(page.events, publishers, strict=True) if i <= horizon)
            # At the end, nothing of this prefix lies between last_id and head_id (one snapshot).
            self.cursor[prefix] = min(horizon, page.last_id if page.more else max(page.last_id, page.head_id))
            if not page.more:
                return

    def needs_catch_up(self, got: protocol.Delivered) -> bool:
        ev = got.event
        prefix = next(p for p in self.prefixes if ev.topic.startswith(p))
        if prefix in self.unconfirmed:
            self.unconfirmed.discard(prefix)
            return True
        kind = topics.kind(ev.topic)
        if not any((kind + ".").startswith(p) for p in self.prefixes):
            return False  # a narrower subscription: seq jumps are expected
        last = self.last_seq.get((got.publisher, ev.source, kind, ev.epoch))
        return ev.seq > (last + 1 if last is not None else 1)

    def admit(self, got: protocol.Delivered) -> bool:
        """True (and remembered) if the event was not yielded before."""
        ev = got.event
        key = (got.publisher, ev.source, topics.kind(ev.topic), ev.epoch)
        if ev.seq <= self.last_seq.get(key, 0):
            return False
        self.last_seq[key] = ev.seq
        return True
