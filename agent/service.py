"""`p4bus agent`: run one agent in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys

import zmq

from agent.session import Agent
from common import metrics
from common.config import Config, ConfigError


def main(cfg: Config) -> None:
    try:
        agent = Agent(cfg)
    except zmq.ZMQError as exc:
        raise ConfigError(f"agent endpoints {cfg.agent_masters()} / {cfg.agent_brokers()}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"agent spool directory: {exc}") from None
    metrics.serve(cfg, "agent", agent.metrics)
    # Signals only set a flag; the wake-up fd interrupts the poll so the loop notices at once.
    signal.set_wakeup_fd(agent.stop_fd, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: agent.request_stop())
    sys.exit(agent.run())
