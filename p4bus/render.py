"""How jobs and agents look in a terminal: the job table, one job's stage timeline, a live log
printer, the agent table.

Shared by `status`, `tail`, `submit --follow`, `agents` and `demo`.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

import click
import msgspec
from rich.console import Console
from rich.text import Text

from common import protocol as P

STATE_STYLE = {
    "DONE": "green",
    "NOTHING_TO_DO": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "WAITING_RESOLVE": "magenta",
    "WAITING_APPROVAL": "magenta",
    "RUNNING": "cyan",
    "UNKNOWN": "yellow",  # its agent cannot be reached: the command may still be running
    "RETRY_WAIT": "yellow",
    "QUEUED": "dim",
    "LOST": "red",
    "PENDING": "dim",
    "DISPATCHED": "cyan",
}
END_STATES = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED", "WAITING_RESOLVE", "WAITING_APPROVAL")


# Every string printed is text, never rich markup or emoji codes: job descriptions, paths, p4
# output and agent names come from people and servers, and "[/bold]" in a description must
# print as itself (and not crash the printer). Styles are given as Text styles instead.
def console(file: IO[str] | None = None) -> Console:
    """The terminal's width (or COLUMNS) on a terminal; piped, a wide plain one, so nothing is
    cut or wrapped mid-id (tables are then printed as plain columns, see print_grid)."""
    c = Console(file=file, markup=False, emoji=False, highlight=False)
    if c.is_terminal:
        return c
    return Console(file=file, width=200, no_color=True, markup=False, emoji=False, highlight=False)


@dataclass
class Grid:
    """A table's content, printed as a table on a terminal and as plain columns when piped.

    ``keep`` are the columns never cut (ids, states); ``wrap`` the one that wraps (a reason);
    ``give_way`` the others in the order they are narrowed, then left out, on a narrow terminal
    (any not named give way first, rightmost first)."""

    headers: list[str]
    rows: list[list[str | Text]] = field(default_factory=list)
    keep: tuple[int, ...] = (0,)
    wrap: int = -1
    give_way: tuple[int, ...] = ()

    def add(self, *cells: str | Text) -> None:
        self.rows.append(list(cells))


def print_grid(c: Console, grid: Grid) -> None:
    lines = terminal_lines(grid, c.width) if c.is_terminal else [Text(line) for line in plain_lines(grid)]
    for line in lines:
        # soft_wrap: the lines are laid out already; a kept column is never cut by the console.
        c.print(line, soft_wrap=True)


# Between columns; at most this wide for a column that is neither kept nor wrapped (it is cut
# with an ellipsis). When the wrap column would get less than a third of the line, the others
# give way in turn: each is narrowed down to SQUEEZED_WIDTH, then left out if still needed.
GAP = 2
CAPPED_WIDTH = 24
SQUEEZED_WIDTH = 6
WRAP_MIN_WIDTH = 12


def print_items(items: Sequence[object], as_json: bool, table: Callable[[], Grid], none: str) -> None:
    """A list command's answer: JSON, its table, or ``none`` when there is nothing."""
    if as_json:
        click.echo(msgspec.json.encode(items).decode())
    elif items:
        print_grid(console(), table())
    else:
        click.echo(none)


def column_widths(grid: Grid, width: int) -> list[int]:
    """Each column's width in a ``width``-column terminal, 0 for one left out. Kept columns
    are never cut (a line may then be longer than ``width``)."""
    n = len(grid.headers)
    wrap = grid.wrap % n
    natural = [max(len(grid.headers[i]), *(len(str(r[i])) for r in grid.rows)) for i in range(n)]
    widths = [w if i in grid.keep or i == wrap else min(w, CAPPED_WIDTH) for i, w in enumerate(natural)]
    named = [i for i in grid.give_way if i not in grid.keep and i != wrap]
    unnamed = [i for i in reversed(range(n)) if i not in grid.keep and i != wrap and i not in named]

    def room() -> int:
        shown = [w for i, w in enumerate(widths) if i != wrap and w]
        return width - sum(shown) - GAP * len(shown)

    want = min(natural[wrap], max(WRAP_MIN_WIDTH, width // 3))  # a reason worth reading
    for i in unnamed + named:
        if room() >= want:
            break
        widths[i] = max(min(widths[i], SQUEEZED_WIDTH), widths[i] - (want - room()))
        if room() < want:
            widths[i] = 0
    widths[wrap] = min(natural[wrap], max(room(), WRAP_MIN_WIDTH))
    return widths


def terminal_lines(grid: Grid, width: int) -> list[Text]:
    """The grid laid out in ``width`` columns: the wrap column's text continues on lines of
    its own, under itself."""
    wrap = grid.wrap % len(grid.headers)
    widths = column_widths(grid, width)
    start = sum(w + GAP for w in widths[:wrap] if w)
    rule = Text("─" * min(width, sum(w + GAP for w in widths if w) - GAP))
    out = [_line([Text(h, style="bold") for h in grid.headers], widths), rule]
    for row in grid.rows:
        pieces = textwrap.wrap(str(row[wrap]), widths[wrap], break_on_hyphens=False) or [""]
        cells = [c if isinstance(c, Text) else Text(c) for c in row]
        cells[wrap] = Text(pieces[0])
        out.append(_line(cells, widths))
        out += [Text(" " * start + more) for more in pieces[1:]]
    return out


def _line(cells: list[Text], widths: list[int]) -> Text:
    shown = [(cell, w) for cell, w in zip(cells, widths, strict=True) if w]
    line = Text()
    for i, (cell, w) in enumerate(shown):
        cell = cell.copy()
        if cell.cell_len > w:
            cell.truncate(w, overflow="ellipsis")
        if i < len(shown) - 1:
            cell.pad_right(w - cell.cell_len + GAP)
        line.append_text(cell)
    line.rstrip()
    return line


def plain_lines(grid: Grid) -> list[str]:
    """Aligned columns, two spaces apart, one line per row, nothing cut: for grep and awk."""
    cells = [grid.headers, *([str(c) for c in row] for row in grid.rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(grid.headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


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


def jobs_table(jobs: list[P.JobView]) -> Grid:
    g = Grid(
        ["job", "state", "stage", "age", "agent", "workspace", "detail"], keep=(0, 1), wrap=6, give_way=(5, 4, 3, 2)
    )
    for j in jobs:
        detail = j.reason or j.waiting_for or (f"change {j.submitted_change}" if j.submitted_change else "")
        stage = "-" if j.state == "QUEUED" else stage_label(j.stage, j.attempt)  # nothing has run yet
        g.add(j.job_id, styled(j.state), stage, age(j.created_at), j.agent or "-", j.workspace, detail)
    return g


def agents_table(rows: list[tuple[str, P.AgentInfo]], now: float) -> Grid:
    """(master id, agent) pairs as `p4bus agents` prints them."""
    g = Grid(
        ["agent", "master", "host", "pools", "slots", "running", "workspaces", "last seen"],
        keep=(0, 4),
        wrap=6,
        give_way=(1, 5, 7, 3, 2),
    )
    for master, a in rows:
        g.add(
            a.agent_id,
            master,
            a.host,
            ",".join(a.pools),
            f"{a.slots - len(a.running)}/{a.slots} free",
            str(len(a.running)),
            ",".join(a.workspaces) or "-",
            f"{now - a.last_seen:.1f}s ago",
        )
    return g


def stage_label(stage: str, attempt: int) -> str:
    """A stage as people read it: its try number once it is retried."""
    return stage if attempt <= 1 else f"{stage} (try {attempt})"


def progress(j: P.JobView, now: float | None = None) -> str:
    """What the orchestrator knows of how far a job is: stages done of the pipeline's, the
    running stage and for how long."""
    stages = pipeline_stages(j.pipeline)
    done = {r.stage for r in j.timeline if r.state == "DONE"} - {j.stage}
    counted = f"stage {len(done & set(stages)) + 1} of {len(stages)}" if stages else ""
    running = [r for r in j.timeline if r.state in ("DISPATCHED", "RUNNING")]
    if not running or j.state in END_STATES:
        return counted
    r = running[-1]
    return (
        f"{counted}: {stage_label(r.stage, r.attempt)} running for {duration(r.started_at or r.created_at, now or 0.0)}"
    )


def pipeline_stages(name: str) -> list[str]:
    """The stage names of pipeline ``name`` in order (none for a pipeline this CLI does not know)."""
    from orchestrator.pipeline import PIPELINES  # only the commands that show progress need it

    pipeline = PIPELINES.get(name)
    return [s.name for s in pipeline.stages] if pipeline else []


def job_detail(console: Console, j: P.JobView) -> None:
    head = Text.assemble(
        (j.job_id, "bold"),
        "  ",
        styled(j.state),
        f"  at {stage_label(j.stage, j.attempt)}  ",
        (f"workspace {j.workspace}", "dim"),
        (f"  agent {j.agent}" if j.agent else "", "dim"),
    )
    console.print(head)
    what = ", ".join(f"{k}={v}" for k, v in j.params.items())
    console.print(f"  {what}", style="dim")
    if step := progress(j):
        console.print(f"  progress: {step}")
    g = Grid(
        ["stage", "step", "try", "state", "exit", "duration", "command", "the line that mattered"],
        keep=(0, 2, 3),
        wrap=7,
        give_way=(6, 1, 5, 4),
    )
    for r in j.timeline:
        code = str(r.exit_code) if r.exit_code is not None else (f"sig {r.signal}" if r.signal else "-")
        g.add(
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
        print_grid(console, g)
    if j.change:
        console.print(f"  pending change: {j.change}")
    if j.submitted_change:
        console.print(Text(f"  submitted change: {j.submitted_change}", style="green"))
    if j.conflicts:
        console.print(Text(conflicts_heading(j), style="magenta"))
        for c in j.conflicts:
            console.print(f"    {c}")
    if j.reason:
        console.print(Text(f"  reason: {j.reason}", style="red" if j.state == "FAILED" else ""))
    if j.waiting_for and j.state not in ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED"):
        console.print(f"  waiting for: {j.waiting_for}", style="dim")


def conflicts_heading(j: P.JobView) -> str:
    """Only a job that waits for a resolve is told to resolve and resume."""
    if j.state == "WAITING_RESOLVE":
        return f"  conflicts (resolve in the workspace, then `p4bus resume {j.job_id}`):"
    return "  conflicts (when it stopped):"


class LogPrinter:
    """Writes command output as it arrives: a header per stage command, stderr lines marked.

    With ``only_stage``, the output of that stage's commands alone and no headers (for grep);
    notes then go to ``notes``."""

    STDERR_MARK = b"stderr| "

    def __init__(
        self, out: IO[bytes], color: bool = False, only_stage: str | None = None, notes: IO[bytes] | None = None
    ) -> None:
        self.out = out
        self.color = color
        self.only_stage = only_stage
        self.notes = notes or out
        self.shown: dict[str, bool] = {}  # cmd_id -> its output is printed (only_stage)
        self.at_line_start: dict[tuple[str, int], bool] = {}

    def header(self, run: P.StageRun) -> None:
        if self.only_stage is not None:
            self.shown[run.cmd_id] = run.stage == self.only_stage
            return
        extra = (f" step {run.step}" if run.step else "") + (f" try {run.attempt}" if run.attempt > 1 else "")
        line = f"── {run.stage}{extra}: {' '.join(run.argv)}"
        self._line(line, "\x1b[1;36m")

    def note(self, text: str) -> None:
        if self.only_stage is not None:
            self.notes.write(f"── {text}\n".encode())
            self.notes.flush()
            return
        self._line(f"── {text}", "\x1b[1;35m")

    def tick(self) -> None:
        """Everything is written as it arrives: nothing to render."""

    def _line(self, text: str, color: str) -> None:
        data = f"{color}{text}\x1b[0m\n" if self.color else text + "\n"
        self.out.write(data.encode())
        self.out.flush()

    def write(self, cmd_id: str, stream: int, data: bytes) -> None:
        if self.only_stage is not None and not self.shown.get(cmd_id):
            return
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
