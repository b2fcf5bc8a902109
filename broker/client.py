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
   missing range is fetched from the agent's spool). So does the first event of a publisher's
   new epoch: the tail of its previous run may have been lost, and nothing else would show it.
6. A lost *tail* leaves no hole until the publisher sends again, so such a subscription also
   takes the publishers' beacons (``beacon.<source>``, every few seconds, live only): a beacon
   whose last seq for a covered kind is above the highest one yielded triggers a catch-up
   too. A kind a beacon names that was never seen from that run triggers one catch-up, after
   which the beacon's seq is its starting point (the reader may have started after it).
7. Whatever a catch-up could not fill -- the journal lacks it (pruned, or lost before it was
   journalled), or the broker did not answer -- is handed to ``on_missing`` as a Gap
   (publisher, source, kind, epoch, seq range) with the reason, and the stream goes on.

8. Several brokers (every publisher sends each event to each): one SUB and one replay client
   per broker, each with its own cursors and confirmations (1-3 per broker), one dedup state
   for all (4). A seq at or below the highest yielded is then not always a copy: one broker may
   have dropped seq 5 and delivered 6 before the other's 5 arrives. So holes are kept (a
   bounded set per key, common/sequence.py) and a late copy fills one exactly once. A live hole
   triggers a catch-up from every broker's journal; what none had stays open for HOLE_GRACE_S
   (the other broker's live copy may be a little behind) and is reported at the publisher's
   next beacon, after one more catch-up from all. Each catch-up pings the brokers at once and
   reads them in the order they answer; a request whose connection drops or is refused fails
   at once (a socket monitor), so a SIGKILLed broker costs no replay timeout. A broker that
   does not answer is skipped (with the reason kept for what stays missing) until its SUB
   delivers again, when it is caught up from its own cursors; only no broker answering at the
   start is an error.

Events come out once each and in broker order (with several brokers, each key's events in seq
order except for the late copies that fill holes). Under a prefix that covers whole kinds nothing
is lost silently: every loss is repaired or reported within a beacon interval of the reader
reading again. Only a publisher that dies takes the knowledge of its unsent tail with it (its
restart is a new epoch, and 5 fetches whatever of the old one the journal has).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TypeVar

import zmq

from common import ids, logs, protocol, roles, topics, zmqutil
from common.auth import Security
from common.sequence import Gap, GapDetector

log = logs.get("broker.client")

PAGE_LIMIT = 1000
IDLE_MAX_S = 2.0
# The spliced subscriber's queue (events). It repairs every loss from the journal, so it needs
# no deep queue of its own, only enough to ride out short stalls without a catch-up: the common
# 200,000 (limits.EVENT_HWM) would let a stalled `p4bus events` of 256 KiB log chunks hold 50 GB.
SPLICE_RCVHWM = 10_000
# With several brokers, a hole one broker's stream shows is reported lost only after it stayed
# open this long and a beacon of its publisher then triggered a repair from every journal: the
# other broker's copy of the missing events may be a little behind.
HOLE_GRACE_S = 1.0
# With several brokers: how long the start waits for each to answer a ping (all at once), and
# how long one found down is left alone before a live event from it brings it back.
PROBE_S = 2.0
RETRY_DOWN_S = 5.0
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

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        security: Security | None,
        timeout_s: float = 10.0,
        fail_on_disconnect: bool = False,
    ) -> None:
        """``fail_on_disconnect``: a request whose connection drops (or cannot be made again)
        fails at once (ReplayTimeout) instead of after ``timeout_s`` -- for a reader of several brokers, whose others can
        answer: a SIGKILLed broker's connection closes at once, and a reader stalled ten seconds
        on it would hold back the events the others deliver."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.sock = zmqutil.dealer(ctx, endpoint, security, roles.BROKER)
        self.drops: zmq.Socket | None = None
        if fail_on_disconnect:
            # A drop, or a reconnection refused (the broker's port is closed: it is dead).
            self.drops = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)

    def close(self) -> None:
        if self.drops is not None:
            self.sock.disable_monitor()
            self.drops.close(linger=0)
        self.sock.close()

    def __enter__(self) -> ReplayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, msg: protocol.Request[R]) -> R:
        """Send and wait for the reply with the same req_id (late replies to earlier, timed-out
        requests are skipped). Raises ReplayError (also for a reply of the wrong type) or
        ReplayTimeout."""
        if self.drops is not None:
            self.forget_drops()
        self.sock.send(protocol.encode(msg))
        deadline_ms = int(self.timeout_s * 1000)
        while self._readable(deadline_ms):
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

    def forget_drops(self) -> None:
        """Drops seen so far are history: what follows is about the next request."""
        while self.drops is not None and self.drops.poll(0):
            self.drops.recv_multipart()

    def _readable(self, timeout_ms: int) -> bool:
        """A reply is waiting (within ``timeout_ms``); ReplayTimeout at once if the connection drops."""
        if self.drops is None:
            return bool(self.sock.poll(timeout_ms))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.drops, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self.sock in ready:
            return True
        if self.drops in ready:
            raise ReplayTimeout(f"the connection to the broker's replay endpoint {self.endpoint} dropped")
        return False

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
        xpub_endpoint: str | Sequence[str],
        replay_endpoint: str | Sequence[str],
        security: Security | None,
        prefixes: Iterable[str] = ("",),
        since_ts: float = 0.0,
        idle_s: float = 0.2,
        timeout_s: float = 10.0,
        on_missing: OnMissing | None = None,
        rcvhwm: int = SPLICE_RCVHWM,
        on_down: OnDown | None = None,
    ) -> Generator[protocol.Delivered, None, None]:
        """Journal history, then live events, without gap or duplicate (module docstring), each
        with its authenticated publisher. A loss that cannot be repaired is handed to
        ``on_missing`` (default: logged) and the stream goes on.

        Several brokers (lists of xpub and replay endpoints, in the same order): every one is
        read, each event comes out once (module docstring, "Several brokers"); only when none
        answers at the start is that the caller's error. One that stops answering is handed to
        ``on_down`` (endpoint, why; default: logged) and the others carry on.

        Runs until the caller stops iterating (``close()`` the generator to release sockets).
        """
        xpubs = [xpub_endpoint] if isinstance(xpub_endpoint, str) else list(xpub_endpoint)
        replays = [replay_endpoint] if isinstance(replay_endpoint, str) else list(replay_endpoint)
        if not xpubs or len(xpubs) != len(replays):
            raise ValueError(f"history_then_live needs one replay endpoint per xpub ({xpubs} / {replays})")
        splice = _Splice(
            normalize_prefixes(prefixes), since_ts, on_missing or _log_missing, several=len(xpubs) > 1, on_down=on_down
        )
        poller = zmq.Poller()
        try:
            for xpub, replay in zip(xpubs, replays, strict=True):
                client = ReplayClient(ctx, replay, security, timeout_s, fail_on_disconnect=len(xpubs) > 1)
                b = _Broker(replay, client, splice.prefixes)
                splice.brokers.append(b)
                b.sub = zmqutil.sub(ctx, xpub, security, splice.subscriptions(), rcvhwm)
                poller.register(b.sub, zmq.POLLIN)
            yield from splice.start()  # no broker answering here is the caller's error
            by_sock = {b.sub: b for b in splice.brokers}
            wait_s = idle_s
            while True:
                ready = poller.poll(int(wait_s * 1000))
                if not ready:
                    if splice.waiting():
                        yield from splice.repair()
                        wait_s = min(wait_s * 2, IDLE_MAX_S)
                    continue
                for sock, _ in ready:
                    try:
                        got = protocol.decode_delivered(sock.recv_multipart())
                    except protocol.ProtocolError:
                        continue  # the broker drops malformed events; nothing else can send here
                    yield from splice.live(by_sock[sock], got)
        finally:
            for b in splice.brokers:
                if b.sub is not None:
                    b.sub.close()
                b.client.close()


history_then_live = ReplayClient.history_then_live

# Why a range of events is missing, as handed to ``on_missing``.
JOURNAL_LACKS = "not in the broker's journal (pruned by retention, or lost before the broker journalled it)"
OnMissing = Callable[[Gap, str], None]
# A broker of several that stopped answering: (its replay endpoint, why).
OnDown = Callable[[str, str], None]


def _log_missing(gap: Gap, why: str) -> None:
    log.warning(
        "events.missing",
        publisher=gap.publisher,
        source=gap.source,
        kind=gap.kind,
        epoch=gap.epoch,
        first=gap.first_missing,
        last=gap.last_missing,
        why=why,
    )


def _log_down(broker: str, why: str) -> None:
    log.warning("broker.unavailable", broker=broker, error=why)


def normalize_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Drop prefixes covered by a shorter one, so the per-prefix journal streams are disjoint."""
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not any(p.startswith(q) for q in out):
            out.append(p)
    return out


_BEACONS = topics.BEACON + "."


class _Pings:
    """A ping sent to each replay client at once, and the answers as they come, with the clients
    whose connection dropped or was refused meanwhile (their ``drops``: only readers of several
    brokers have them). A dropped client stays waiting until ``give_up``: a broker still
    starting refuses connections for a moment, and the ping waits in its queue."""

    def __init__(self, clients: Sequence[ReplayClient]) -> None:
        self.waiting: dict[zmq.Socket, tuple[ReplayClient, str]] = {}
        self.drops: dict[zmq.Socket, ReplayClient] = {}
        self.poller = zmq.Poller()
        for c in clients:
            req_id = ids.new_id()
            c.forget_drops()
            c.sock.send(protocol.encode(protocol.Ping(req_id=req_id)))
            self.waiting[c.sock] = (c, req_id)
            self.poller.register(c.sock, zmq.POLLIN)
            if c.drops is not None:
                self.drops[c.drops] = c
                self.poller.register(c.drops, zmq.POLLIN)

    def answered(self, timeout_s: float) -> tuple[list[ReplayClient], list[ReplayClient]]:
        """(clients whose answer arrived, waiting clients whose connection failed), waiting up
        to ``timeout_s`` for one of either."""
        ok: list[ReplayClient] = []
        failed: list[ReplayClient] = []
        for sock, _ in self.poller.poll(int(timeout_s * 1000)):
            if sock in self.drops:
                c = self.drops[sock]
                c.forget_drops()
                if c.sock in self.waiting:
                    failed.append(c)
                continue
            if sock not in self.waiting:
                continue
            c, req_id = self.waiting[sock]
            try:
                reply = protocol.decode(sock.recv(), protocol.Reply)
            except protocol.ProtocolError:
                continue
            if reply.req_id == req_id:
                self.give_up(c)
                ok.append(c)
        return ok, failed

    def give_up(self, c: ReplayClient) -> None:
        """Stop waiting for ``c``."""
        if self.waiting.pop(c.sock, None) is not None:
            self.poller.unregister(c.sock)
        if c.drops is not None and self.drops.pop(c.drops, None) is not None:
            self.poller.unregister(c.drops)


def in_answer_order(
    clients: Sequence[ReplayClient], first_wait_s: float, fail_fast: bool
) -> Iterator[tuple[ReplayClient, str]]:
    """Ping every client at once; yield (client, "") for each as it answers, and (client, why)
    for each that failed or did not answer. The first answer is waited for up to
    ``first_wait_s``, the others PROBE_S after it, so a broker that is dead or hangs among live
    ones costs PROBE_S. With ``fail_fast`` (a reader that has read the brokers before: a refusal
    now is a death, not a broker still starting), one whose connection drops or is refused has
    failed at once: a killed broker costs nothing."""
    pings = _Pings(clients)
    deadline = time.monotonic() + first_wait_s
    while pings.waiting:
        ready, failed = pings.answered(max(0.0, deadline - time.monotonic()))
        if not ready and not failed and time.monotonic() >= deadline:
            break  # (nothing, before the deadline: a late answer to an earlier ping was skipped)
        if ready:
            deadline = min(deadline, time.monotonic() + PROBE_S)
        for c in failed if fail_fast else []:
            pings.give_up(c)
            yield c, f"the connection to the broker's replay endpoint {c.endpoint} failed"
        for c in ready:
            yield c, ""
    for c, _req in list(pings.waiting.values()):
        yield c, f"no answer from the broker's replay endpoint {c.endpoint} within {PROBE_S}s"


class _Broker:
    """One broker as a spliced reader sees it: its replay client and live SUB, a journal cursor
    per prefix, the prefixes whose subscription it has not confirmed yet, and whether it failed
    to answer (then it is skipped until it delivers a live event again)."""

    def __init__(self, name: str, client: ReplayClient, prefixes: list[str]) -> None:
        self.name = name
        self.client = client
        self.sub: zmq.Socket | None = None
        self.cursor = dict.fromkeys(prefixes, 0)
        self.unconfirmed = set(prefixes)  # no live event seen yet: subscription maybe not active
        self.down = ""  # why it last failed to answer; "" while it answers
        self.down_at = 0.0  # monotonic time it was found down

    def confirm(self, topic: str) -> bool:
        """The first live event of an unconfirmed prefix (or of a broker that was down, once
        RETRY_DOWN_S has passed, so a broker too slow to answer costs a timeout that often at
        most): its subscription is active now, and what the journal got meanwhile must be read
        first."""
        if self.down:  # only ever with several brokers
            if time.monotonic() - self.down_at < RETRY_DOWN_S:
                return False  # its live events still count; its journal is asked again later
            self.down = ""
            return True
        for p in self.unconfirmed:
            if topic.startswith(p):
                self.unconfirmed.discard(p)
                return True
        return False


class _Splice:
    """State of one history_then_live: its brokers, and what was yielded per (publisher,
    source, kind, epoch) -- the dedup high-water marks and, with several brokers, the holes a
    copy from another broker may still fill."""

    def __init__(
        self,
        prefixes: list[str],
        since_ts: float,
        on_missing: OnMissing,
        several: bool = False,
        on_down: OnDown | None = None,
    ) -> None:
        self.brokers: list[_Broker] = []
        self.on_down = on_down or _log_down
        self.prefixes = prefixes
        self.since_ts = since_ts
        self.on_missing = on_missing
        self.several = several
        self.gaps = GapDetector(keep_holes=several)
        # Beacons are printed only to a reader who names them; "" wants history, not bookkeeping.
        self.show_beacons = any(p and (_BEACONS.startswith(p) or p.startswith(_BEACONS)) for p in prefixes)
        # Why the last repair could not ask every broker ("" when it could): the reason given
        # for what it left missing.
        self.unreachable = ""

    def subscriptions(self) -> list[str]:
        """The prefixes, and the beacons when a prefix covers a whole kind (they show its lost tails)."""
        wants = any("." not in p[:-1] for p in self.prefixes)  # "", "log.", "lo": a whole kind
        if wants and not any(_BEACONS.startswith(p) for p in self.prefixes):
            return [*self.prefixes, _BEACONS]
        return list(self.prefixes)

    def covers(self, kind: str) -> bool:
        """True if every event of ``kind`` comes through one prefix, so its seq has no holes
        (under a narrower prefix such as ``log.JOB.`` jumps are normal). Beacons never count:
        they are not journalled, so a lost one is neither repairable nor news."""
        return kind != topics.BEACON and any((kind + ".").startswith(p) for p in self.prefixes)

    def start(self) -> Iterator[protocol.Delivered]:
        """The history of every broker. One broker that does not answer is the caller's error;
        of several, only all of them not answering is (a dead one is read again once it is back)."""
        if not self.several:
            yield from self.catch_up(self.brokers[0])
            return
        # Brokers still starting refuse connections for a moment: wait for them as for one.
        yield from self._from_each(self.brokers, first_wait_s=self.brokers[0].client.timeout_s, fail_fast=False)
        if all(b.down for b in self.brokers):
            raise ReplayTimeout("no broker answered: " + "; ".join(b.down for b in self.brokers))

    def _from_each(
        self, brokers: list[_Broker], first_wait_s: float = PROBE_S, fail_fast: bool = True
    ) -> Iterator[protocol.Delivered]:
        """Catch up from each of several brokers in the order they answer a ping sent to all at
        once, so the first history comes as soon as one answers and, once one has, another
        that is dead costs PROBE_S more, not a replay timeout (nothing, with ``fail_fast``, if its
        connection drops or is refused meanwhile). One that fails or does not answer is marked
        down. ``first_wait_s``: how long to wait for the first (at the start: the replay timeout,
        as with one broker, so brokers still starting are waited for)."""
        by_client = {b.client: b for b in brokers}
        for client, why in in_answer_order([b.client for b in brokers], first_wait_s, fail_fast):
            b = by_client[client]
            if why:
                self._down(b, why)
                continue
            try:
                yield from self.catch_up(b)
            except (ReplayError, ReplayTimeout) as exc:
                self._down(b, str(exc))

    def _down(self, b: _Broker, why: str) -> None:
        if not b.down:
            self.on_down(b.name, why)
        b.down = why
        b.down_at = time.monotonic()

    def waiting(self) -> bool:
        """A broker that answers has a subscription not confirmed yet: catch up while idle."""
        return any(b.unconfirmed and not b.down for b in self.brokers)

    def catch_up(self, b: _Broker) -> Iterator[protocol.Delivered]:
        """Yield new journalled events of broker ``b`` after its cursors, all prefixes merged in
        journal order.

        Every prefix is read up to one horizon, the journal head when the catch-up starts; else
        a prefix read later could yield an event newer than ones another prefix still lacks.
        If the broker fails midway, the cursors go back to where they were (events yielded
        meanwhile come again and are dropped as duplicates): a page read ahead by the merge but
        not yet yielded must not be skipped.
        """
        before = dict(b.cursor)
        try:
            horizon = b.client.page(self.prefixes[0], after=_BEYOND_HEAD).head_id
            for _id, topic, body, publisher in heapq.merge(*(self._stream(b, p, horizon) for p in self.prefixes)):
                try:
                    got = protocol.decode_delivered([topic.encode(), body, publisher.encode()])
                except protocol.ProtocolError:
                    continue  # only well-formed events are journalled; be lenient anyway
                if self.admit(got):
                    yield got
        except (ReplayError, ReplayTimeout):
            b.cursor = before
            raise

    def repair(self, only: _Broker | None = None) -> Iterator[protocol.Delivered]:
        """A catch-up after the start, from ``only`` or from every broker that answers: if one
        cannot be asked, remember why (what stays missing is reported with that reason) and
        carry on with the live stream (with several, the others; one found down is skipped until
        it delivers live again, after RETRY_DOWN_S)."""
        self.unreachable = ""
        if not self.several:
            try:
                yield from self.catch_up(self.brokers[0])
            except (ReplayError, ReplayTimeout) as exc:
                self.unreachable = f"the broker's journal could not be asked ({exc})"
            return
        yield from self._from_each([only] if only is not None else [b for b in self.brokers if not b.down])
        self.unreachable = "; ".join(
            f"the journal of broker {b.name} could not be asked ({b.down})" for b in self.brokers if b.down
        )

    def live(self, b: _Broker, got: protocol.Delivered) -> Iterator[protocol.Delivered]:
        """One live event from broker ``b``: repair first whatever it shows was missed, then
        yield it if new."""
        ev = got.event
        confirming = b.confirm(ev.topic)
        if isinstance(ev, protocol.Beacon):
            yield from self._beacon(b, got, confirming)
            return
        loss = self._shows_loss(got)
        if loss or confirming:
            yield from self.repair(None if loss else b)
        if self.admit(got):
            yield got

    def _shows_loss(self, got: protocol.Delivered) -> bool:
        """A hole before this event, or the first event of a publisher's new run (its previous
        run's tail may have been lost, and no later event of that run will ever show it)."""
        ev, publisher = got
        kind = topics.kind(ev.topic)
        if not self.covers(kind):
            return False
        if self.gaps.peek(ev.source, ev.topic, ev.epoch, ev.seq, publisher) is not None:
            return True
        runs = self.gaps.seen.get((publisher, ev.source, kind), {})
        return bool(runs) and ev.epoch not in runs

    def _beacon(self, b: _Broker, got: protocol.Delivered, confirming: bool) -> Iterator[protocol.Delivered]:
        """A publisher's last seq per kind: a tail we lack is repaired from the journal; what the
        journal lacks too is reported. A kind never seen from this run is taken as the starting
        point once the journal has been asked (the reader may have started after it). With
        several brokers, so are the holes that stayed open for HOLE_GRACE_S: no broker's live
        stream or journal filled them."""
        beacon, publisher = got
        assert isinstance(beacon, protocol.Beacon)
        last = {kind: seq for kind, seq in beacon.last.items() if self.covers(kind)}
        gaps, unseen = self.gaps.behind(publisher, beacon.source, beacon.epoch, last)
        if confirming:
            yield from self.repair(b)
        if gaps or unseen or self._due(publisher, beacon.source, beacon.epoch, last):
            yield from self.repair()
            gaps, unseen = self.gaps.behind(publisher, beacon.source, beacon.epoch, last)
        for gap in [*self._due(publisher, beacon.source, beacon.epoch, last), *gaps]:
            self.on_missing(gap, self.unreachable or JOURNAL_LACKS)
            self.gaps.give_up(gap)
        for kind, seq in last.items():
            self.gaps.skip_to(publisher, beacon.source, kind, beacon.epoch, seq)
        if self.show_beacons:
            yield got

    def _due(self, publisher: str, source: str, epoch: str, kinds: Iterable[str]) -> list[Gap]:
        """Holes of those kinds open for HOLE_GRACE_S (only kept with several brokers)."""
        before = self.gaps.clock() - HOLE_GRACE_S
        return [h for kind in kinds for h in self.gaps.holes(publisher, source, kind, epoch, opened_before=before)]

    def _stream(self, b: _Broker, prefix: str, horizon: int) -> Iterator[tuple[int, str, bytes, str]]:
        while b.cursor[prefix] < horizon:
            page = b.client.page(prefix, b.cursor[prefix], self.since_ts)
            # A broker that predates publishers sends none: "", as on an insecure bus.
            publishers = page.publishers or [""] * len(page.events)
            if len(publishers) != len(page.events):
                raise ReplayError(
                    "bad_reply",
                    f"replay page has {len(page.events)} events but {len(publishers)} publishers",
                )
            yield from ((i, t, b_, p) for (i, t, b_), p in zip(page.events, publishers, strict=True) if i <= horizon)
            # At the end, nothing of this prefix lies between last_id and head_id (one snapshot).
            b.cursor[prefix] = min(horizon, page.last_id if page.more else max(page.last_id, page.head_id))
            if not page.more:
                return

    def admit(self, got: protocol.Delivered) -> bool:
        """True (and remembered) if the event was not yielded before. A hole it leaves behind
        under a prefix that covers its kind was repaired as far as it could be: with one broker,
        report the rest now; with several, another broker's copy may still be on its way, so
        the hole stays open until a beacon finds it still open after HOLE_GRACE_S."""
        ev, publisher = got
        is_new, gap, _restarted = self.gaps.observe(ev.source, ev.topic, ev.epoch, ev.seq, publisher)
        if gap is not None and self.covers(gap.kind) and not self.several:
            self.on_missing(gap, self.unreachable or JOURNAL_LACKS)
        return is_new
