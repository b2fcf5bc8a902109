"""One wake-up of the orchestrator's loop takes a bounded batch from each socket
(orchestrator/service.py: BATCH_MAX messages, BATCH_BUDGET_S seconds), so a flood of events
cannot keep the loop from its tick, its health clock and its lease check; the rest waits on the
socket for the next wake-up, nothing is dropped."""

import time
from types import SimpleNamespace

import pytest
import zmq

from orchestrator import service
from orchestrator.service import BATCH_MAX, Orchestrator

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def flooded():
    """A PAIR socket with 2.5 batches of messages waiting on it (real ZeroMQ, inproc)."""
    ctx = zmq.Context()
    rx, tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (rx, tx):
        s.set_hwm(0)  # the whole flood waits on the socket (no high-water mark)
    rx.bind("inproc://flood")
    tx.connect("inproc://flood")
    n = BATCH_MAX * 5 // 2
    for i in range(n):
        tx.send_multipart([b"ev", str(i).encode()])
    yield rx, n
    rx.close(0)
    tx.close(0)
    ctx.term()


def _loop(handled: list[int], cost_s: float = 0.0) -> SimpleNamespace:
    def step(handler, frames):  # Orchestrator.step, without the store
        handler(frames)

    def handle(frames: list[bytes]) -> None:
        handled.append(int(frames[1]))
        until = time.monotonic() + cost_s
        while time.monotonic() < until:  # a step that costs this much CPU
            pass

    return SimpleNamespace(step=step, handle=handle)


def test_a_flood_is_taken_a_batch_at_a_time_and_nothing_is_dropped(flooded):
    sock, n = flooded
    handled: list[int] = []
    loop = _loop(handled)
    wake_ups = 0
    while len(handled) < n:
        before = len(handled)
        Orchestrator._drain(loop, sock, loop.handle)  # type: ignore[arg-type]
        wake_ups += 1
        assert len(handled) - before <= BATCH_MAX
    assert handled == list(range(n)) and wake_ups == 3


def test_slow_steps_end_the_batch_at_its_time_budget(flooded, monkeypatch):
    sock, _n = flooded
    monkeypatch.setattr(service, "BATCH_BUDGET_S", 0.05)
    handled: list[int] = []
    loop = _loop(handled, cost_s=0.005)
    started = time.monotonic()
    Orchestrator._drain(loop, sock, loop.handle)  # type: ignore[arg-type]
    took = time.monotonic() - started
    # At least 5 ms a step (more when the machine preempts it): the budget ends the batch after
    # at most ~10 steps, not BATCH_MAX of them (5 s).
    assert 1 <= len(handled) <= 11, len(handled)
    assert took < BATCH_MAX * 0.005 / 2
