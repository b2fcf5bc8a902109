"""Compact `--follow`: counting files in chunked output, one line per stage, bounded rendering."""

from __future__ import annotations

import io

from common import protocol as P
from p4bus.progress import PIPED_EVERY_S, LineCounter, ProgressPrinter, is_file_line, summary


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(stage: str, cmd_id: str, attempt: int = 1, **kw: float) -> P.StageRun:
    return P.StageRun(stage=stage, step=0, attempt=attempt, cmd_id=cmd_id, state="RUNNING", **kw)


def test_file_lines_are_depot_paths_and_the_first_field_of_ztag_records() -> None:
    assert is_file_line(b"//depot/main/a.c#2 - added as /ws/a.c")
    assert is_file_line(b"... depotFile //depot/main/a.c")
    assert is_file_line(b"... clientFile /ws/main/a.c")  # resolve -n: no depotFile
    assert not is_file_line(b"... clientFile //ws/main/a.c")  # opened: depotFile counted it
    assert not is_file_line(b"Change 5 created.") and not is_file_line(b"... change 3")


def test_counting_survives_chunks_split_anywhere() -> None:
    text = b"".join(b"//depot/f%d.c#1 - added as /ws/f%d.c\n" % (i, i) for i in range(50)) + b"Done.\n"
    for size in (1, 7, 64, len(text)):
        counter = LineCounter()
        for at in range(0, len(text), size):
            counter.feed(text[at : at + size])
        assert counter.files == 50, size


def test_piped_one_line_per_stage_when_it_ends_and_progress_at_most_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressPrinter(out, live=False, clock=clock)
    p.header(run("SYNC", "c1"))
    p.write("c1", P.STDOUT, b"//depot/a#1 - added as /ws/a\n//depot/b#1 - added as /ws/b\n")
    p.write("c1", P.STDERR, b"//depot/x - no such file(s).\n")  # stderr is not progress
    for _ in range(100):
        p.tick()  # no time has passed: nothing printed, however often it is asked
    assert out.getvalue() == ""
    clock.now += PIPED_EVERY_S
    p.tick()
    assert out.getvalue().splitlines() == [f"{'SYNC':22}{'2 files':>14}{'0/s':>11}{5.0:8.1f}s  ..."]
    clock.now += 1
    p.header(run("CREATE_CHANGE", "c2"))
    p.end_stage()
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["SYNC", "2", "files", "0/s", "6.0s"]
    assert lines[2].split() == ["CREATE_CHANGE", "0.0s"]


def test_a_terminal_line_is_rewritten_in_place_at_a_bounded_rate_and_shows_the_try() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressPrinter(out, live=True, clock=clock)
    p.header(run("INTEGRATE", "c1", attempt=2))
    renders = 0
    for i in range(1000):
        p.write("c1", P.STDOUT, b"//depot/main/f%d.c#1 - integrate from //depot/dev/f%d.c#1\n" % (i, i))
        clock.now += 0.001  # a thousand chunks in one second
        before = out.getvalue().count("\r")
        p.tick()
        renders += out.getvalue().count("\r") > before
    assert 1 <= renders <= 9
    p.end_stage()
    last = out.getvalue().split("\r\x1b[K")[-1]
    assert last.startswith("INTEGRATE (try 2)") and "1,000 files" in last and last.endswith("s\n")


def test_a_history_stage_shows_how_long_it_ran_not_how_long_the_replay_took() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressPrinter(out, live=False, clock=clock)
    p.header(P.StageRun(stage="SYNC", step=0, attempt=1, cmd_id="c1", state="DONE", started_at=10.0, ended_at=22.5))
    p.end_stage()
    assert out.getvalue().split()[-1] == "12.5s"


def view(state: str, **kw: object) -> P.JobView:
    base = {"job_id": "INT-1", "stage": "NEEDS_RESOLVE", "pipeline": "p4-integrate", "workspace": "ws"}
    return P.JobView(state=state, created_at=0.0, updated_at=0.0, **base, **kw)  # type: ignore[arg-type]


def test_the_summary_says_the_outcome_the_failure_line_and_the_conflicts() -> None:
    assert summary(view("DONE", submitted_change=7)) == ["INT-1 DONE: submitted change 7"]
    failed = summary(view("FAILED", reason="p4 sync failed (exit 1)", key_line="Connect to server failed"))
    assert failed == [
        "INT-1 FAILED at NEEDS_RESOLVE",
        "  reason: p4 sync failed (exit 1)",
        "  p4 said: Connect to server failed",
    ]
    waiting = summary(view("WAITING_RESOLVE", conflicts=["/ws/a.c"]))
    assert "then `p4bus resume INT-1`" in waiting[1] and waiting[2] == "    /ws/a.c"
    cancelled = summary(view("CANCELLED", conflicts=["/ws/a.c"]))
    assert not any("resume" in line for line in cancelled) and "conflicts (when it stopped):" in cancelled[1]
