"""The web process's side of the bus: requests from worker threads, live job and agent changes,
and the shared job feeds.

ZeroMQ sockets belong to one thread each, so every worker thread has its own orchestrator and
master clients; the event loop never blocks on the bus.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import zmq

from common import topics, zmqutil
from common.auth import Security
from common.config import Config
from common.rpc import MasterClient, OrchestratorClient
from p4bus.web.feed import JobFeed
from p4bus.web.wakeup import Wakeup

T = TypeVar("T")
FEED_IDLE_S = 60.0  # a feed nobody watches is stopped after this long


class Bus:
    def __init__(self, cfg: Config, security: Security | None) -> None:
        self.cfg = cfg
        self.security = security
        self._local = threading.local()

    def _clients(self) -> tuple[OrchestratorClient, MasterClient]:
        got = getattr(self._local, "clients", None)
        if got is None:
            got = self._local.clients = (
                OrchestratorClient(self.cfg.client_orchestrators(), self.security, timeout=5.0),
                MasterClient(self.cfg.client_masters(), self.security, timeout=10.0),
            )
        return got

    async def orch(self, fn: Callable[[OrchestratorClient], T]) -> T:
        return await asyncio.to_thread(lambda: fn(self._clients()[0]))

    async def masters(self, fn: Callable[[MasterClient], T]) -> T:
        return await asyncio.to_thread(lambda: fn(self._clients()[1]))


class BusWatch(threading.Thread):
    """Live job and agent events, as two counters pages wait on (they then re-read the state)."""

    def __init__(self, cfg: Config, security: Security | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="bus-watch", daemon=True)
        self.cfg = cfg
        self.security = security
        self.jobs = Wakeup(loop)
        self.agents = Wakeup(loop)
        self.stopping = threading.Event()

    def run(self) -> None:
        sub = zmqutil.sub(
            zmq.Context.instance(),
            self.cfg.broker_xpubs(),  # only wake-ups: a copy from each broker costs a re-read
            self.security,
            [topics.JOB + ".", topics.AGENT + "."],
        )
        try:
            while not self.stopping.is_set():
                if not sub.poll(500):
                    continue
                seen = set()
                while sub.poll(0):
                    seen.add(sub.recv_multipart()[0].split(b".", 1)[0])
                if topics.JOB.encode() in seen:
                    self.jobs.bump()
                if topics.AGENT.encode() in seen:
                    self.agents.bump()
        finally:
            sub.close()


class Feeds:
    """One JobFeed per watched job, stopped a while after its last watcher leaves."""

    def __init__(self, cfg: Config, security: Security | None, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.security = security
        self.loop = loop
        self.feeds: dict[str, JobFeed] = {}

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[JobFeed]:
        self.reap()
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = JobFeed(self.cfg, self.security, job_id, self.loop)
            feed.start()
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            feed.idle_since = time.monotonic()

    def reap(self) -> None:
        now = time.monotonic()
        for job_id, feed in list(self.feeds.items()):
            if feed.watchers == 0 and now - feed.idle_since > FEED_IDLE_S:
                feed.stopping.set()
                del self.feeds[job_id]

    def stop(self) -> None:
        for feed in self.feeds.values():
            feed.stopping.set()
