"""Compact `--follow`: one line per stage with its progress, instead of every byte of output.

A stage's progress is the number of files its output names so far (a line that starts with a
depot path, or one -ztag record), its rate and its elapsed time. On a terminal the running
stage's line is rewritten in place, at most RENDERS_PER_S times a second; piped, each stage
prints one line when it ends, plus a progress line at most every PIPED_EVERY_S while it runs.
Counting is cheap and rendering is bounded, so the display keeps up with any job (the tail
drains every event that has arrived before it calls tick()).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from common import protocol as P
from p4bus.render import conflicts_heading, stage_label

RENDERS_PER_S = 8
PIPED_EVERY_S = 5.0
# Enough of a line's start to classify it; the rest of a long line is not kept.
_PREFIX = 48


def is_file_line(line: bytes) -> bool:
    """A line that names one file: p4's `//depot/... - added as ...` style, or the first field
    of a -ztag record (depotFile; clientFile with a local path, as `resolve -n` prints)."""
    if line.startswith(b"... clientFile /"):
        return not line.startswith(b"... clientFile //")
    return line.startswith((b"//", b"... depotFile "))


class LineCounter:
    """Counts file lines of one byte stream as it arrives in chunks split anywhere."""

    def __init__(self) -> None:
        self.files = 0
        self._partial = b""

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        lines[0] = self._partial + lines[0]
        for line in lines[:-1]:
            self.files += is_file_line(line)
        self._partial = lines[-1][:_PREFIX]


@dataclass
class StageProgress:
    stage: str
    attempt: int
    started: float  # on this printer's clock, when it was first shown
    files: int = 0
    recorded: float = 0.0  # run time of its commands that had ended when they were shown
    live: bool = False  # one of its commands was running when shown: time it here

    def add(self, run: P.StageRun) -> None:
        if run.ended_at and run.started_at:
            self.recorded += run.ended_at - run.started_at  # history: as it ran, not as replayed
        else:
            self.live = True

    def line(self, now: float, running: bool) -> str:
        """`STAGE  files  rate  elapsed`, in fixed columns (blank where there is nothing)."""
        elapsed = max(now - self.started, 0.0) if self.live else self.recorded
        files = f"{self.files:,} file{'' if self.files == 1 else 's'}" if self.files else ""
        rate = f"{self.files / elapsed:,.0f}/s" if self.files and elapsed >= 1.0 else ""
        more = "  ..." if running else ""
        return f"{stage_label(self.stage, self.attempt):22}{files:>14}{rate:>11}{elapsed:8.1f}s{more}"


class ProgressPrinter:
    """The tail's printer for compact `--follow` (see tailer.Printer)."""

    def __init__(self, out: IO[str], live: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.live = live  # a terminal: rewrite the running stage's line in place
        self.clock = clock
        self.current: StageProgress | None = None
        self.counters: dict[str, LineCounter] = {}
        self._counted = 0  # files of the current stage's earlier commands
        self._shown = ""  # the in-place line now on the terminal
        self._last_render = 0.0

    def header(self, run: P.StageRun) -> None:
        now = self.clock()
        cur = self.current
        if cur is None or (cur.stage, cur.attempt) != (run.stage, run.attempt):
            self.end_stage()
            cur = self.current = StageProgress(run.stage, run.attempt, now)
            self._counted = 0
            self._last_render = now
        else:
            self._counted = cur.files  # a further step of the same stage adds to its count
        cur.add(run)
        self.counters = {run.cmd_id: LineCounter()}

    def write(self, cmd_id: str, stream: int, data: bytes) -> None:
        counter = self.counters.get(cmd_id)
        if counter is None or stream != P.STDOUT or self.current is None:
            return  # an earlier command's late bytes, or stderr: not progress
        counter.feed(data)
        self.current.files = self._counted + counter.files

    def note(self, text: str) -> None:
        self._clear()
        self.out.write(f"{text}\n")
        self.out.flush()

    def tick(self) -> None:
        cur = self.current
        if cur is None:
            return
        now = self.clock()
        if self.live:
            if now - self._last_render >= 1 / RENDERS_PER_S:
                self._last_render = now
                self._show(cur.line(now, running=True))
        elif now - self._last_render >= PIPED_EVERY_S:
            self._last_render = now
            self.out.write(cur.line(now, running=True) + "\n")
            self.out.flush()

    def end_stage(self) -> None:
        """The running stage is over: its final line, once."""
        if self.current is None:
            return
        self._clear()
        self.out.write(self.current.line(self.clock(), running=False) + "\n")
        self.out.flush()
        self.current = None

    def _show(self, line: str) -> None:
        self.out.write("\r\x1b[K" + line)
        self.out.flush()
        self._shown = line

    def _clear(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")
            self._shown = ""


def summary(j: P.JobView) -> list[str]:
    """The end of a compact follow: the outcome, the failure line, the conflicts."""
    ended = j.state in ("DONE", "NOTHING_TO_DO")
    lines = [f"{j.job_id} {j.state}" + ("" if ended else f" at {j.stage}")]
    if j.submitted_change:
        lines[0] += f": submitted change {j.submitted_change}"
    if j.reason:
        lines.append(f"  reason: {j.reason}")
    if j.state == "FAILED" and (said := j.key_line or (j.timeline[-1].key_line if j.timeline else "")):
        lines.append(f"  p4 said: {said}")
    if j.conflicts:
        lines.append(conflicts_heading(j))
        lines += [f"    {c}" for c in j.conflicts]
    return lines
