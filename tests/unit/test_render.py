"""What people and servers wrote is printed as text: rich markup in it is neither applied nor
able to crash the printer (issue 9, finding 9: `submit --desc 'fix [/bold] thing'` then
`status JOB` raised MarkupError)."""

from __future__ import annotations

import io
import time

import msgspec
import pytest
from rich.console import Console

from common import protocol as P
from p4bus.render import LogPrinter, agents_table, console, job_detail, jobs_table, print_grid

MARKUP = ["fix [/bold] thing", "[red]red[/red]", "[bold magenta]x", "[link=http://evil]y[/link]", ":smile:"]
TEXT = " ".join(MARKUP)


def view() -> P.JobView:
    run = P.StageRun(
        stage="PRE_SUBMIT",
        step=1,
        attempt=1,
        cmd_id="c1",
        state="DONE",
        agent="a[red]1",
        argv=["sh", "-c", "echo '[/bold]'"],
        exit_code=1,
        key_line=f"hook said {TEXT}",
        reason="[/] reason",
    )
    return P.JobView(
        job_id="INT-1",
        state="FAILED",
        stage="PRE_SUBMIT",
        pipeline="integrate",
        workspace="ws[/bold]",
        created_at=0.0,
        updated_at=0.0,
        agent="a[red]1",
        params={"desc": TEXT, "source": "//depot/[dev]/..."},
        reason=f"pre-submit failed: {TEXT}",
        key_line=TEXT,
        conflicts=["//depot/[main]/a.c [/bold]"],
        change=5,
        waiting_for="[i]",
        timeline=[run],
    )


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def test_job_detail_prints_markup_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    job_detail(console(), view())
    out = printed(capsys)
    assert f"desc={TEXT}" in out and f"reason: pre-submit failed: {TEXT}" in out
    assert "//depot/[main]/a.c [/bold]" in out
    assert f"hook said {MARKUP[0]}" in out and "workspace ws[/bold]" in out and "agent a[red]1" in out


def test_the_job_and_agent_tables_print_markup_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    v = view()
    c = console()
    print_grid(c, jobs_table([v]))
    info = P.AgentInfo(agent_id="a[red]1", host="h[/bold]", pools=["[b]"], workspaces=["ws[/]"], slots=2)
    print_grid(c, agents_table([("m[bold]", info)], now=1.0))
    out = printed(capsys)
    for text in ("INT-1", "a[red]1", "ws[/bold]", "h[/bold]", "[b]", "ws[/]", "m[bold]"):
        assert text in out
    assert f"pre-submit failed: {MARKUP[0]}" in out


def test_the_log_printer_writes_bytes_as_they_are() -> None:
    out = io.BytesIO()
    printer = LogPrinter(out)
    printer.header(
        P.StageRun(stage="SYNC", step=0, attempt=1, cmd_id="c1", state="RUNNING", argv=["p4", "sync", "[/bold]"])
    )
    printer.write("c1", P.STDOUT, b"[red]//depot/x#1 - added\n")
    printer.write("c1", P.STDERR, b"[/bold]\n")
    assert (
        out.getvalue() == b"\xe2\x94\x80\xe2\x94\x80 SYNC: p4 sync [/bold]\n[red]//depot/x#1 - added\nstderr| [/bold]\n"
    )


def long_job(state: str = "FAILED") -> P.JobView:
    return P.JobView(
        job_id="INT-20261201-0014",
        state=state,
        stage="RESOLVE_PASS_2",
        pipeline="p4-integrate",
        workspace="release-workspace-with-a-long-name",
        created_at=time.time() - 300,
        updated_at=0.0,
        agent="build-agent-07.example.com",
        reason="p4 resolve -am failed (exit 1): " + "the quick brown fox jumps over the lazy dog " * 3,
    )


def terminal(width: int) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None, markup=False), buf


def test_the_job_table_at_80_columns_keeps_id_state_and_stage_whole_and_wraps_the_reason() -> None:
    c, buf = terminal(80)
    print_grid(c, jobs_table([long_job(), long_job("WAITING_RESOLVE")]))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert sum("INT-20261201-0014" in line for line in lines) == 2
    assert any("WAITING_RESOLVE" in line for line in lines) and any("RESOLVE_PASS_2" in line for line in lines)
    words = " ".join(lines)
    assert all(w in words for w in ("quick", "brown", "lazy", "dog")), buf.getvalue()


def test_columns_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    buf = io.StringIO()
    c = Console(file=buf, force_terminal=True, color_system=None, markup=False)
    print_grid(c, jobs_table([long_job()]))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 60 and any("INT-20261201-0014" in line for line in lines)


def test_piped_tables_are_plain_aligned_columns_one_line_a_row(capsys: pytest.CaptureFixture[str]) -> None:
    print_grid(console(), jobs_table([long_job(), long_job("DONE")]))
    lines = printed(capsys).splitlines()
    assert len(lines) == 3 and not any(ch in "".join(lines) for ch in "│┃━─╇┏")
    at = lines[0].index("state")
    assert lines[1][at:].startswith("FAILED") and lines[2][at:].startswith("DONE")
    assert lines[1].split()[0] == "INT-20261201-0014" and lines[1].endswith("lazy dog")


def test_a_cancelled_job_is_not_told_to_resolve_and_resume(capsys: pytest.CaptureFixture[str]) -> None:
    cancelled = msgspec.structs.replace(view(), state="CANCELLED")
    job_detail(console(), cancelled)
    out = printed(capsys)
    assert "p4bus resume" not in out and "conflicts (when it stopped):" in out
    waiting = msgspec.structs.replace(view(), state="WAITING_RESOLVE")
    job_detail(console(), waiting)
    assert "then `p4bus resume INT-1`" in printed(capsys)


def test_job_detail_shows_progress_and_the_try_number_of_a_retried_stage(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        P.StageRun(stage="GET_LATEST_CL", step=0, attempt=1, cmd_id="c1", state="DONE"),
        P.StageRun(stage="SYNC", step=0, attempt=1, cmd_id="c2", state="LOST"),
        P.StageRun(stage="SYNC", step=0, attempt=2, cmd_id="c3", state="RUNNING", started_at=time.time() - 3),
    ]
    running = msgspec.structs.replace(long_job("RUNNING"), stage="SYNC", reason="", timeline=runs)
    job_detail(console(), running)
    out = printed(capsys)
    assert "progress: stage 2 of 13: SYNC (try 2) running for 3." in out


def test_the_job_table_shows_a_retried_stages_try(capsys: pytest.CaptureFixture[str]) -> None:
    retried = msgspec.structs.replace(long_job("RETRY_WAIT"), stage="SYNC", attempt=2)
    print_grid(console(), jobs_table([retried, long_job()]))
    rows = printed(capsys).splitlines()[1:]
    assert "SYNC (try 2)" in rows[0] and "(try" not in rows[1]
