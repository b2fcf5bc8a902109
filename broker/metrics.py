"""The broker's instruments: its proxy and journal counts, read from ``Broker.counters``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import Gauge

from common.metrics import PREFIX, CountersCollector, ProcessMetrics

COUNTERS = {
    "events_in": "Valid events received from publishers (beacons apart).",
    "events_out": "Events forwarded to subscribers.",
    "beacons": "Beacons forwarded (live only, never journalled).",
    "bad_frames": "Malformed events and subscription frames, dropped.",
    "unauthenticated": "Events without an authenticated publisher on a CURVE socket, dropped.",
    "journalled": "Events written to the journal.",
    "journal_dropped": "Events dropped from the journal because its writer stayed stuck (disk full, hung).",
    "pruned": "Journal rows removed by retention (age or size).",
    "replay_requests": "Replay requests answered.",
    "replay_errors": "Replay requests refused or failed.",
}
GAUGES = {
    "journal_bytes": "Journal size: the bytes of the event bodies it holds (what journal_max_bytes limits).",
    "journal_rows": "Events the journal holds.",
    "journal_queue": "Events waiting for the journal writer.",
}


class BrokerMetrics(ProcessMetrics):
    def __init__(self, ident: str, counters: Callable[[], Mapping[str, int]], journal_max_bytes: int) -> None:
        super().__init__("broker", ident)
        self.collect(CountersCollector(PREFIX + "broker_", counters, COUNTERS | GAUGES, gauges=GAUGES))
        limit = Gauge(
            PREFIX + "broker_journal_max_bytes",
            "The journal's size limit (broker.journal_max_bytes).",
            registry=self.registry,
        )
        limit.set(journal_max_bytes)
