"""`p4bus agent`: run one agent in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys

from agent.session import Agent
from common.config import Config


def main(cfg: Config) -> None:
    agent = Agent(cfg)
    # Signals only set a flag; the wake-up fd interrupts the poll so the loop notices at once.
    signal.set_wakeup_fd(agent.stop_fd, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: agent.request_stop())
    sys.exit(agent.run())
