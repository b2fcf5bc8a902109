"""`p4bus broker`: the proxy (main thread), the journal writer and the replay endpoint (threads)."""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading

import zmq

from broker.journal_reader import JournalReader
from broker.journal_schema import journal_path
from broker.journal_writer import JournalWriter
from broker.metrics import BrokerMetrics
from broker.proxy import Proxy
from broker.replay import ReplayServer
from common import auth, logs, metrics
from common.config import Config

log = logs.get("broker")


class Broker:
    """Binds everything on construction (a BindError propagates with nothing left open); the
    journal is opened by ``run``, so a second broker on the same ports fails before touching it."""

    def __init__(self, cfg: Config) -> None:
        self.endpoints = {name: cfg.endpoint(name) for name in ("broker_xsub", "broker_xpub", "broker_replay")}
        self.source = f"broker@{socket.gethostname()}"
        self.journal = JournalWriter(journal_path(cfg.broker, cfg.state_path), cfg.broker)
        security = auth.for_service(cfg, "broker", "broker")
        self.ctx = zmq.Context()
        try:
            self.proxy = Proxy(
                self.ctx, self.endpoints["broker_xsub"], self.endpoints["broker_xpub"], self.journal, security
            )
            self.replay = ReplayServer(
                self.ctx,
                self.endpoints["broker_replay"],
                reader_factory=lambda: JournalReader(self.journal.path),
                barrier=lambda timeout: self.journal.wait_done(self.proxy.counters.events_in, timeout),
                counters=self.counters,
                source=self.source,
                security=security,
            )
        except Exception:
            auth.stop_authenticator(self.ctx)
            # destroy, not term: a socket whose bind failed inside a helper is still open.
            self.ctx.destroy(linger=0)
            raise
        self.metrics = BrokerMetrics(self.source, self.counters, cfg.broker.journal_max_bytes)

    def counters(self) -> dict[str, int]:
        out = dataclasses.asdict(self.proxy.counters) | dataclasses.asdict(self.journal.counters)
        out["journal_queue"] = self.journal.queued
        out["replay_requests"] = self.replay.requests
        out["replay_errors"] = self.replay.errors
        return out

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then flush the journal and close every socket."""
        self.journal.start()
        self.replay.start()
        log.info(
            "broker.ready",
            xsub=self.endpoints["broker_xsub"],
            xpub=self.endpoints["broker_xpub"],
            replay=self.endpoints["broker_replay"],
            journal=str(self.journal.path),
        )
        try:
            self.proxy.run(stop, self.metrics.health.tick)
        finally:
            self.replay.stop()
            self.proxy.close()
            self.journal.stop()
            auth.stop_authenticator(self.ctx)
            self.ctx.term()
            log.info("broker.stopped", **self.counters())


def main(cfg: Config) -> None:
    broker = Broker(cfg)
    metrics.serve(cfg, "broker", broker.metrics)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("broker.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    broker.run(stop)
