"""How long a worker waits before trying a failing receiver again. Pure."""

from __future__ import annotations


def delay_s(failures: int, initial_s: float, max_s: float, jitter: float = 0.0) -> float:
    """The wait after ``failures`` failures in a row (>= 1): ``initial_s`` doubling up to
    ``max_s``; ``jitter`` in [-1, 1] moves it by up to a fifth either way, so receivers that
    went down together are not all retried in the same instant."""
    base = min(max_s, initial_s * 2 ** min(max(failures, 1) - 1, 62))
    return max(0.0, base * (1 + 0.2 * max(-1.0, min(1.0, jitter))))
