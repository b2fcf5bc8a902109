"""The job events, read from the broker's journal with their journal ids.

The notifier must say which events it has handled in a form that outlives it: the journal id.
Live frames carry none, so the journal is read (replay pages after the cursor) and the live
subscription serves only to know when to read again: a live event arrives, the next replay
contains it (the broker answers a replay only once its journal holds every event it had
accepted when the request came). While nothing comes live the reader reads the journal every
second anyway (service.py), so an event whose live copy was lost waits no longer than that.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

from broker.client import ReplayClient, ReplayError
from common import logs, roles, topics, zmqutil
from common import protocol as P
from common.auth import Security

log = logs.get("notify")

PREFIX = topics.JOB + "."
# Any id is below it (SQLite's largest integer): an empty page that carries the head id.
BEYOND_HEAD = (1 << 63) - 1


class JobEvents:
    def __init__(
        self, ctx: zmq.Context, xpub: str, replay: str, security: Security | None, timeout_s: float = 10.0
    ) -> None:
        self.security = security
        self.refused: dict[str, int] = {}  # publisher key -> job events not believed
        self.replay = ReplayClient(ctx, replay, security, timeout_s)
        self.sub = zmqutil.sub(ctx, xpub, security, [PREFIX])

    def close(self) -> None:
        self.sub.close()
        self.replay.close()

    def head(self) -> int:
        """The journal's newest id now."""
        return self.replay.page(PREFIX, after=BEYOND_HEAD, limit=1).head_id

    def after(self, cursor: int) -> Iterator[tuple[int, P.JobChanged | None]]:
        """(journal id, event) for every job event after ``cursor``, in journal order; the event
        is None where it is not a job change the orchestrator published (skip it, but move past).
        Ends with (id, None) at the position the reader may rest at: nothing of ours lies
        between the last event and it."""
        while True:
            page = self.replay.page(PREFIX, after=cursor)
            # A broker that predates publishers sends none: "", as on an insecure bus.
            publishers = page.publishers or [""] * len(page.events)
            if len(publishers) != len(page.events):
                raise ReplayError(
                    "bad_reply", f"replay page has {len(page.events)} events but {len(publishers)} publishers"
                )
            for (journal_id, topic, body), publisher in zip(page.events, publishers, strict=True):
                yield journal_id, self._trusted(topic, body, publisher)
            cursor = page.last_id
            if not page.more:
                # One snapshot: nothing under PREFIX lies between last_id and head_id.
                if page.head_id > cursor:
                    yield page.head_id, None
                return

    def wait(self, timeout_s: float) -> bool:
        """Until a live job event arrives (True) or ``timeout_s`` passes; drains what came."""
        if not self.sub.poll(int(timeout_s * 1000)):
            return False
        zmqutil.drain(self.sub, lambda _frames: None)  # what they say is read from the journal
        return True

    def _trusted(self, topic: str, body: bytes, publisher: str) -> P.JobChanged | None:
        try:
            ev = P.decode_delivered([topic.encode(), body, publisher.encode()]).event
        except P.ProtocolError:
            return None
        if not isinstance(ev, P.JobChanged):
            return None
        if self.security is not None and self.security.role_of(publisher) != roles.ORCHESTRATOR:
            # Only the orchestrator's key speaks for jobs (docs/security.md); said once per key,
            # so a forger cannot flood the log.
            if publisher not in self.refused:
                log.warning("notify.untrusted_event", key=publisher, topic=topic, source=ev.source)
            self.refused[publisher] = self.refused.get(publisher, 0) + 1
            return None
        return ev
