"""What people and servers wrote is printed as text: rich markup in it is neither applied nor
able to crash the printer (issue 9, finding 9: `submit --desc 'fix [/bold] thing'` then
`status JOB` raised MarkupError)."""

from __future__ import annotations

import io

import pytest

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
