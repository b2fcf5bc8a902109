"""The notifier's instruments: notices delivered, failed (retried) and rejected, per receiver."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from common.metrics import PREFIX, ProcessMetrics
from p4bus.notify.worker import Worker

OUTCOMES = {
    "sent": "Notices delivered, per receiver.",
    "failed": "Delivery attempts that failed and will be retried, per receiver.",
    "rejected": "Notices a receiver rejected for good (not retried), per receiver.",
}


class NotifyMetrics(ProcessMetrics):
    def __init__(self, ident: str, workers: Mapping[str, Worker]) -> None:
        super().__init__("notify", ident)
        self.collect(_Deliveries(workers))


class _Deliveries(Collector):
    def __init__(self, workers: Mapping[str, Worker]) -> None:
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        for outcome, text in OUTCOMES.items():
            family = CounterMetricFamily(PREFIX + f"notify_{outcome}", text, labels=["receiver"])
            for name, worker in self.workers.items():
                family.add_metric([name], worker.counts[outcome])
            yield family

    def describe(self) -> Iterable[Metric]:
        return self.collect()
