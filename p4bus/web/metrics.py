"""The dashboard's metrics: its health is its event loop's (a handler that blocks the loop
stalls every page and stream at once), ticked by a task of that loop."""

from __future__ import annotations

import asyncio

from common.metrics import ProcessMetrics

TICK_S = 0.5


class WebMetrics(ProcessMetrics):
    def __init__(self, ident: str) -> None:
        super().__init__("web", ident)

    async def ticker(self) -> None:
        while True:
            self.health.tick()
            await asyncio.sleep(TICK_S)
