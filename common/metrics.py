"""Prometheus metrics and a health endpoint for one service process.

Each process makes one ``ProcessMetrics`` (its own ``CollectorRegistry``, not the library's
global default, so that several services built in one test process stay apart), declares its
instruments on it (``broker/metrics.py``, ``master/metrics.py``, ...), and its ``main`` serves
it with ``serve``: a small HTTP server in a daemon thread answering

- ``GET /metrics``: the registry in Prometheus' text format;
- ``GET /health``: 200 and ``{"service", "id", "status": "ok", ...}`` while the service's loop
  ticks; 503 with ``"status": "starting"`` before its first tick, and ``"stalled"`` when it has
  not ticked for ``stale_s`` -- or did not for that long within the last ``hold_s`` (a stall
  between two scrapes still shows, and a process that was frozen whole, SIGSTOP, says so once
  it answers again).

Counters a service keeps already (the ``counters`` its Stats reply serves) are exposed by
``CountersCollector``, which reads them at scrape time rather than counting twice.

The endpoint is unauthenticated (docs/security.md): it binds loopback by default and exposes
counts and timings only, never a secret, an argv or a path.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import logs
from common.config import Config, ConfigError
from common.protocol import CmdStatus

log = logs.get("metrics")

PREFIX = "p4bus_"
# A loop that has not ticked for this long is stalled: every service loop wakes at least once a
# second (the agent's poll timeout is its heartbeat, the slowest at 1 s by default).
STALE_S = 3.0
# A stall is reported for this long after it ended, so that a scrape every 15 s still sees it.
HOLD_S = 15.0
# Buckets for durations from a millisecond (a commit, a dispatch) to an hour (a big sync).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def command_outcome(status: CmdStatus) -> str:
    """A finished command's outcome, the label of its duration."""
    if status.error:
        return "refused"
    if status.timed_out:
        return "timed_out"
    if status.killed:
        return "killed"
    return "ok" if status.exit_code == 0 else "failed"


class Health:
    """Whether a service's loop is alive, from the ticks the loop reports (``tick``).

    ``tick`` is called by the loop's thread and ``report`` by the HTTP server's: each reads or
    writes whole floats, which the GIL keeps atomic.
    """

    def __init__(
        self,
        service: str,
        ident: str,
        stale_s: float = STALE_S,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.id = ident
        self.stale_s = stale_s
        self.hold_s = hold_s
        self.clock = clock
        self.started = clock()
        self.last_tick: float | None = None
        self.stall_s = 0.0  # the longest recent gap between two ticks
        self.stall_ended = float("-inf")

    def tick(self) -> None:
        now = self.clock()
        # The first tick ends the start-up, which is no stall, however long it took.
        gap = now - (self.last_tick if self.last_tick is not None else now)
        if gap > self.stale_s:
            self.stall_s, self.stall_ended = gap, now
        self.last_tick = now

    def tick_age(self) -> float:
        return -1.0 if self.last_tick is None else self.clock() - self.last_tick

    def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 when ok, 503 while starting and when the loop is or was just stalled."""
        now = self.clock()
        last = self.last_tick
        recent_stall = now - self.stall_ended <= self.hold_s
        if last is None:
            status = "starting"
        elif now - last > self.stale_s or recent_stall:
            status = "stalled"
        else:
            status = "ok"
        body: dict[str, Any] = {
            "service": self.service,
            "id": self.id,
            "status": status,
            "last_tick_s_ago": None if last is None else round(now - last, 3),
            "uptime_s": round(now - self.started, 3),
        }
        if recent_stall:
            body["stalled_for_s"] = round(self.stall_s, 3)
            body["stall_ended_s_ago"] = round(now - self.stall_ended, 3)
        return (200 if status == "ok" else 503), body


class ProcessMetrics:
    """One process's registry and health; the per-service modules add their instruments."""

    def __init__(self, service: str, ident: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = Health(service, ident)
        # /health as a number Prometheus can alert on (a scrape still works while the loop is stuck).
        Gauge(
            PREFIX + "loop_tick_age_seconds",
            "Seconds since the service's main loop last ticked (-1 before its first tick).",
            registry=self.registry,
        ).set_function(self.health.tick_age)

    def collect(self, collector: Collector) -> None:
        self.registry.register(collector)


class CountersCollector(Collector):
    """Exposes a dict of counts a service keeps anyway, read at scrape time.

    ``read`` returns the dict (a copy is taken at once: the service's thread changes it);
    ``gauges`` names the keys that go up and down, every other key is a counter
    (``<prefix><key>_total``). ``help`` gives each metric's description; keys not in it are
    not exposed, so a counter added to a Stats reply does not appear unexplained.
    """

    def __init__(
        self, prefix: str, read: Callable[[], Mapping[str, int]], help: Mapping[str, str], gauges: Iterable[str] = ()
    ) -> None:
        self.prefix = prefix
        self.read = read
        self.help = dict(help)
        self.gauges = frozenset(gauges)

    def collect(self) -> Iterable[Metric]:
        values = dict(self.read())
        for key, text in self.help.items():
            value = values.get(key, 0)
            if key in self.gauges:
                yield GaugeMetricFamily(self.prefix + key, text, value=value)
            else:
                yield CounterMetricFamily(self.prefix + key, text, value=value)

    def describe(self) -> Iterable[Metric]:
        return self.collect()


def parse_url(url: str, setting: str) -> tuple[str, int]:
    """(host, port) of a metrics endpoint ``http://HOST:PORT/``; ConfigError naming ``setting``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ConfigError(f"{setting} {url!r} is not http://HOST:PORT/ (e.g. http://127.0.0.1:9097/), nor 'off'")
    return parts.hostname, port


class MetricsServer:
    """The HTTP endpoint of one process, in a daemon thread (it dies with the process)."""

    def __init__(self, host: str, port: int, metrics: ProcessMetrics) -> None:
        handler = _handler(metrics)
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]  # the one the kernel chose for port 0
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve(cfg: Config, service: str, metrics: ProcessMetrics) -> MetricsServer | None:
    """Serve ``metrics`` where ``[service] metrics`` says (None: it is off). A malformed value is
    a ConfigError; a port that cannot be bound is logged as an error and the service runs on
    without metrics: they are for watching it, and a port taken must not take the bus down."""
    url = cfg.metrics_url(service)
    if url is None:
        return None
    host, port = parse_url(url, f"{service}.metrics")
    try:
        server = MetricsServer(host, port, metrics)
    except OSError as exc:
        log.error("metrics.bind_failed", url=url, error=exc.strerror or str(exc), fix=f"set {service}.metrics")
        return None
    log.info("metrics.ready", url=server.url, health=server.url + "health")
    return server


def _handler(metrics: ProcessMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "p4bus-metrics"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path in ("/metrics", "/"):
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            elif path == "/health":
                status, body = metrics.health.report()
                self._send(status, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    return Handler
