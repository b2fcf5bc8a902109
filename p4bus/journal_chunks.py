"""A command's output chunks as the brokers journalled them, for a live reader of several
brokers whose stream skipped some: a broker drops a slow subscriber's events past its queue
(limits.BROKER_SNDHWM), and a reader subscribed to one job's topics cannot repair that by seq
(broker/client.py, item 5), but the journal still has them, and reading them there costs the
agent's spool nothing. Asked only once a hole has stayed open for the hold's grace
(p4bus/stream.py, HoldBack); whatever no journal has still comes from the spool.
"""

from __future__ import annotations

import time

import zmq

from broker.client import PROBE_S, RETRY_DOWN_S, ReplayClient, ReplayError, ReplayTimeout
from common import auth, topics
from common import protocol as P
from common.config import Config


class JournalChunks:
    def __init__(self, cfg: Config, security: auth.Security | None) -> None:
        self.ctx = zmq.Context()
        # A dead broker refuses the connection (fails at once); a stuck one costs PROBE_S, then
        # is left alone for RETRY_DOWN_S.
        self.clients = [
            ReplayClient(self.ctx, replay, security, PROBE_S, fail_on_disconnect=True)
            for replay in cfg.broker_replays()
        ]
        self.failed_at: dict[str, float] = {}

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.ctx.term()

    def chunks(self, job_id: str, cmd_id: str, stream: int, since_ts: float) -> list[tuple[P.LogChunk, str]]:
        """(chunk, publisher) of ``cmd_id``'s ``stream`` that any broker received at or after
        ``since_ts``, every broker's copies (the reader drops what it has)."""
        out: list[tuple[P.LogChunk, str]] = []
        for c in self.clients:
            if time.monotonic() - self.failed_at.get(c.endpoint, -RETRY_DOWN_S) < RETRY_DOWN_S:
                continue
            try:
                out += self._read(c, topics.log(job_id, cmd_id), cmd_id, stream, since_ts)
            except (ReplayError, ReplayTimeout):
                self.failed_at[c.endpoint] = time.monotonic()
        return out

    @staticmethod
    def _read(c: ReplayClient, prefix: str, cmd_id: str, stream: int, since_ts: float) -> list[tuple[P.LogChunk, str]]:
        out = []
        after = 0
        while True:
            page = c.page(prefix, after, since_ts)
            publishers = page.publishers or [""] * len(page.events)
            for (_id, topic, body), publisher in zip(page.events, publishers, strict=False):
                try:
                    ev = P.decode_delivered([topic.encode(), body, publisher.encode()]).event
                except P.ProtocolError:
                    continue
                if isinstance(ev, P.LogChunk) and ev.cmd_id == cmd_id and ev.stream == stream:
                    out.append((ev, publisher))
            if not page.more:
                return out
            after = page.last_id
