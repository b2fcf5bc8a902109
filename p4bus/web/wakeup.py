"""A version counter that worker threads bump and event-loop tasks wait on."""

from __future__ import annotations

import asyncio


class Wakeup:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.version = 0
        self._waiters: set[asyncio.Future[None]] = set()

    def bump(self) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self.version += 1
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait(self, seen: int, timeout: float) -> int:
        """The version once it is past ``seen`` (or as it is after ``timeout`` seconds)."""
        if self.version == seen:
            fut = self.loop.create_future()
            self._waiters.add(fut)
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                self._waiters.discard(fut)
        return self.version
