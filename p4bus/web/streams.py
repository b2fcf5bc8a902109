"""The dashboard's streams: a job's output as SSE (ids are journal positions, journal.py), the
jobs/agents change notices, and byte-exact downloads of output from the agents' spools."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from common import protocol as P
from common.rpc import MasterClient
from p4bus.web import journal
from p4bus.web.bus import Bus, BusWatch, Feeds
from p4bus.web.journal import Position

KEEPALIVE_S = 15.0
LIVE_MIN_GAP_S = 0.25  # jobs/agents change notices, at most this often per page
FETCH_CHUNK = 4 << 20
READY_S = 10.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Streams:
    """Runs while the app does: the shared job feeds and the live jobs/agents watch."""

    def __init__(self, bus: Bus, feeds: Feeds, watch: BusWatch) -> None:
        self.bus = bus
        self.feeds = feeds
        self.watch = watch

    async def job_events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or ""
        at = journal.decode(raw, len(self.feeds.cfg.bus_brokers()))  # None: a snapshot first
        await self.bus.orch(lambda oc: oc.job(job_id))  # no feed (a thread) for a job that does not exist
        feeds = self.feeds

        async def stream() -> AsyncIterator[bytes]:
            async with feeds.watch(job_id) as feed:
                # The history is read once before anyone gets a snapshot (at most READY_S).
                deadline = time.monotonic() + READY_S
                while not feed.ready.is_set() and time.monotonic() < deadline:
                    await feed.wakeup.wait(feed.wakeup.version, 0.1)
                yield b"retry: 500\n\n"
                pos: Position | None = at
                while True:
                    seen = feed.wakeup.version
                    got = feed.since(pos) if pos is not None else None
                    if got is None:
                        pos, msg = await asyncio.to_thread(feed.snapshot)
                        yield msg
                        continue
                    pos, msgs = got
                    if msgs:
                        yield b"".join(msgs)
                    elif await feed.wakeup.wait(seen, KEEPALIVE_S) == seen:
                        yield b": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def live_events(self, request: Request) -> Response:
        watch = self.watch

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 1000\n\n"
            jobs, agents = watch.jobs.version, watch.agents.version
            while True:
                await asyncio.wait(
                    [
                        asyncio.ensure_future(watch.jobs.wait(jobs, KEEPALIVE_S)),
                        asyncio.ensure_future(watch.agents.wait(agents, KEEPALIVE_S)),
                    ],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                out = b""
                if watch.jobs.version != jobs:
                    jobs, out = watch.jobs.version, out + b"event: jobs\ndata: \n\n"
                if watch.agents.version != agents:
                    agents, out = watch.agents.version, out + b"event: agents\ndata: \n\n"
                yield out or b": keepalive\n\n"
                await asyncio.sleep(LIVE_MIN_GAP_S)  # a burst of changes is one refresh

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def command_output(self, request: Request) -> Response:
        """One command's stream from its agent's spool, byte-exact: all of it, or ``size`` bytes from ``offset``."""
        job_id, cmd_id = request.path_params["job_id"], request.path_params["cmd_id"]
        q = request.query_params
        stream = {"stdout": P.STDOUT, "stderr": P.STDERR}.get(q.get("stream", "stdout"))
        offset, size = q.get("offset", "0"), q.get("size", "")
        if stream is None or not offset.isdigit() or (size and not size.isdigit()):
            return PlainTextResponse("stream is stdout or stderr; offset and size are byte counts", 400)
        job = await self.bus.orch(lambda oc: oc.job(job_id))
        run = next((r for r in job.timeline if r.cmd_id == cmd_id), None)
        if run is None or not run.agent:
            return PlainTextResponse(f"job {job_id} has no command {cmd_id} that ran", 404)
        chunks = self._read(run, stream, int(offset), int(size) if size else None)
        name = f"{job_id}-{cmd_id}.{P.STREAM_NAMES[stream]}"
        return StreamingResponse(chunks, media_type="application/octet-stream", headers=_download(name))

    async def job_log(self, request: Request) -> Response:
        """The whole output of the job: each command's heading, stdout, then stderr, byte-exact."""
        job_id = request.path_params["job_id"]
        job = await self.bus.orch(lambda oc: oc.job(job_id))

        async def whole() -> AsyncIterator[bytes]:
            for run in job.timeline:
                if not run.agent or run.state in ("PENDING", "CANCELLED"):
                    continue
                yield f"── {run.stage} step {run.step} attempt {run.attempt}: {' '.join(run.argv)}\n".encode()
                for stream in (P.STDOUT, P.STDERR):
                    async for data in self._read(run, stream, 0, None):
                        yield data

        return StreamingResponse(whole(), media_type="text/plain; charset=utf-8", headers=_download(f"{job_id}.log"))

    async def _read(self, run: P.StageRun, stream: int, offset: int, size: int | None) -> AsyncIterator[bytes]:
        end = None if size is None else offset + size
        while end is None or offset < end:
            want = FETCH_CHUNK if end is None else min(FETCH_CHUNK, end - offset)
            reply = await self.bus.masters(partial(_fetch, run, stream, offset, want))
            if not reply.data:
                return
            offset += len(reply.data)
            yield reply.data


def _fetch(run: P.StageRun, stream: int, offset: int, size: int, mc: MasterClient) -> P.FetchReply:
    return mc.fetch(run.cmd_id, stream, offset, size, agent=run.agent)


def _download(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"', "X-Content-Type-Options": "nosniff"}
