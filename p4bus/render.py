"""How jobs and agents look in a terminal: the job table, one job's stage timeline, a live log
printer, the agent table.

Shared by `status`, `tail`, `submit --follow`, `agents` and `demo`.
"""

from __future__ import annotations

import time
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from common import protocol as P

STATE_STYLE = {
    "DONE": "green",
    "NOTHING_TO_DO": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "WAITING_RESOLVE": "magenta",
    "RUNNING": "cyan",
    "UNKNOWN": "yellow",  # its agent cannot be reached: the command may still be running
    "RETRY_WAIT": "yellow",
    "QUEUED": "dim",
    "LOST": "red",
    "PENDING": "dim",
    "DISPATCHED": "cyan",
}
END_STATES = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED", "WAITING_RESOLVE")


# Every string printed is text, never rich markup or emoji codes: job descriptions, paths, p4
# output and agent names come from people and servers, and "[/bold]" in a description must
# print as itself (and not crash the printer). Styles are given as Text styles instead.
def console() -> Console:
    """A terminal console, or a wide plain one when piped: a table cut to 80 columns and
    wrapped mid-id is useless to grep. Either prints strings as text."""
    c = Console(markup=False, emoji=False, highlight=False)
    if c.is_terminal:
        return c
    return Console(width=200, no_color=True, markup=False, emoji=False, highlight=False)


def age(ts: float, now: float | None = None) -> str:
    s = max(0.0, (now or time.time()) - ts)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def duration(start: float, end: float) -> str:
    if not start:
        return "-"
    d = (end or time.time()) - start
    return f"{d * 1000:.0f}ms" if d < 1 else f"{d:.1f}s"


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def jobs_table(jobs: list[P.JobView]) -> Table:
    t = Table("job", "state", "stage", "age", "agent", "workspace", "detail")
    for col in t.columns[:6]:
        col.no_wrap = True
    for j in jobs:
        detail = j.reason or j.waiting_for or (f"change {j.submitted_change}" if j.submitted_change else "")
        stage = "-" if j.state == "QUEUED" else j.stage  # nothing has run yet
        t.add_row(j.job_id, styled(j.state), stage, age(j.created_at), j.agent or "-", j.workspace, detail)
    return t


def agents_table(rows: list[tuple[str, P.AgentInfo]], now: float) -> Table:
    """(master id, agent) pairs as `p4bus agents` prints them."""
    table = Table("agent", "master", "host", "pools", "slots", "running", "workspaces", "last seen")
    for master, a in rows:
        table.add_row(
            a.agent_id,
            master,
            a.host,
            ",".join(a.pools),
            f"{a.slots - len(a.running)}/{a.slots} free",
            str(len(a.running)),
            ",".join(a.workspaces) or "-",
            f"{now - a.last_seen:.1f}s ago",
        )
    return table


def job_detail(console: Console, j: P.JobView) -> None:
    head = Text.assemble(
        (j.job_id, "bold"),
        "  ",
        styled(j.state),
        f"  at {j.stage}  ",
        (f"workspace {j.workspace}", "dim"),
        (f"  agent {j.agent}" if j.agent else "", "dim"),
    )
    console.print(head)
    what = ", ".join(f"{k}={v}" for k, v in j.params.items())
    console.print(f"  {what}", style="dim")
    t = Table("stage", "step", "try", "state", "exit", "duration", "command", "the line that mattered", show_edge=False)
    for r in j.timeline:
        code = str(r.exit_code) if r.exit_code is not None else (f"sig {r.signal}" if r.signal else "-")
        t.add_row(
            r.stage,
            str(r.step),
            str(r.attempt),
            styled(r.state),
            code,
            duration(r.started_at, r.ended_at),
            " ".join(r.argv)[:60],
            r.key_line or r.reason,
        )
    if j.timeline:
        console.print(t)
    if j.change:
        console.print(f"  pending change: {j.change}")
    if j.submitted_change:
        console.print(Text(f"  submitted change: {j.submitted_change}", style="green"))
    if j.conflicts:
        console.print(
            Text("  conflicts (resolve in the workspace, then `p4bus resume " + j.job_id + "`):", style="magenta")
        )
        for c in j.conflicts:
            console.print(f"    {c}")
    if j.reason:
        console.print(Text(f"  reason: {j.reason}", style="red" if j.state == "FAILED" else ""))
    if j.waiting_for and j.state not in ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED"):
        console.print(f"  waiting for: {j.waiting_for}", style="dim")


class LogPrinter:
    """Writes command output as it arrives: a header per stage command, stderr lines marked."""

    STDERR_MARK = b"stderr| "

    def __init__(self, out: IO[bytes], color: bool = False) -> None:
        self.out = out
        self.color = color
        self.at_line_start: dict[tuple[str, int], bool] = {}

    def header(self, stage: str, step: int, attempt: int, argv: list[str]) -> None:
        extra = (f" step {step}" if step else "") + (f" attempt {attempt}" if attempt > 1 else "")
        line = f"── {stage}{extra}: {' '.join(argv)}"
        self._line(line, "\x1b[1;36m")

    def note(self, text: str) -> None:
        self._line(f"── {text}", "\x1b[1;35m")

    def _line(self, text: str, color: str) -> None:
        data = f"{color}{text}\x1b[0m\n" if self.color else text + "\n"
        self.out.write(data.encode())
        self.out.flush()

    def write(self, cmd_id: str, stream: int, data: bytes) -> None:
        if stream == P.STDOUT:
            self.out.write(data)
        else:
            key = (cmd_id, stream)
            lines = data.split(b"\n")
            marked = bytearray()
            for i, part in enumerate(lines):
                last = i == len(lines) - 1
                if last and not part:
                    break
                if self.at_line_start.get(key, True):
                    marked += self.STDERR_MARK
                marked += part
                if not last:
                    marked += b"\n"
                self.at_line_start[key] = not last
            self.out.write(bytes(marked))
        self.out.flush()
