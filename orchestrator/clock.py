"""The orchestrator's one source of wall-clock time, injected so tests can move it by hand.

Seconds since the epoch, as ``time.time`` gives them: they are stored (timestamps, backoff
deadlines) and compared across restarts, so a monotonic clock would not do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

system_clock: Clock = time.time


def utc_day(t: float) -> str:
    """The UTC date of ``t`` as YYYYMMDD (job ids are numbered per day)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%d")


def utc_time(t: float) -> str:
    """``t`` for people: YYYY-MM-DD HH:MM:SS UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
