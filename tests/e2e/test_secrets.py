"""Secrets and people's text through whole jobs (issue 9, findings 1, 8 and 9): a printed password
is redacted everywhere it could be read back, only the orchestrator's environment holds it, a
password file others can read is refused, and markup in a description or in p4 output prints
as text."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(180)

PASSWORD = "Pa55-w0rd-e2e-91c"


def p4bus(jobs, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p4bus", "--config", str(jobs.stack.config_file()), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )


def password_file(jobs, mode: int = 0o600) -> Path:
    path = jobs.tmp / "p4passwd"
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    return path


def test_a_printed_password_is_redacted_in_events_journal_spool_and_tail(jobs):
    pw = password_file(jobs)
    leak = jobs.tmp / "leak.txt"  # what a careless hook prints: the password, whole
    leak.write_text(f"the password is {PASSWORD}\n")
    jobs.workspace("ws1", "clean", password=PASSWORD, password_file=str(pw), tickets_file=str(jobs.tmp / "tickets"))
    jobs.stack.tree["orchestrator"]["site"] = {"pre_submit": [["sh", "-c", f"cat {leak}"]]}
    jobs.start()
    job_id = jobs.submit("ws1")
    view = jobs.wait_state(job_id)
    assert view.state == "DONE", view.reason
    hook = next(r for r in view.timeline if r.argv[:1] == ["sh"])
    spool = jobs.tmp / "spool" / hook.agent / hook.cmd_id
    assert (spool / "stdout").read_text() == "the password is ***\n"
    with jobs.masters() as mc:
        assert mc.query([hook.cmd_id], agent=hook.agent)[0].stdout == b"the password is ***\n"
    tail = p4bus(jobs, "tail", job_id)
    assert tail.returncode == 0 and "the password is ***\n" in tail.stdout, tail.stderr
    assert PASSWORD not in tail.stdout
    # Nowhere on disk but where it was put: not in the journal (every event), the store, a spool.
    server = jobs.tmp / "ws1" / "server"
    for path in jobs.tmp.rglob("*"):
        if path.is_file() and path not in (pw, leak) and server not in path.parents:
            assert PASSWORD.encode() not in path.read_bytes(), f"password found in {path}"
    for db in ("jobs.db", "journal.db"):
        con = sqlite3.connect(jobs.tmp / "state" / db)
        assert PASSWORD not in "\n".join(con.iterdump())
        con.close()
    # And what the services wrote is theirs alone (finding 8).
    state = jobs.tmp / "state"
    assert not stat.S_IMODE(state.stat().st_mode) & 0o077
    loose = [p for p in [*state.rglob("*"), *(jobs.tmp / "logs").rglob("*"), *spool.parent.rglob("*")] if p.exists()]
    assert [str(p) for p in loose if stat.S_IMODE(p.stat().st_mode) & 0o077] == []


def test_the_password_reaches_only_the_orchestrator_process(jobs):
    """Finding 1: every service got the full environment, the workspace password with it."""
    jobs.workspace("ws1", "clean", password=PASSWORD, password_env="WS1_P4PASSWD")
    jobs.stack.env["WS1_P4PASSWD"] = PASSWORD
    jobs.start()
    assert jobs.wait_state(jobs.submit("ws1")).state == "DONE"  # so the orchestrator had it

    def environ(pid: int) -> bytes:
        return Path(f"/proc/{pid}/environ").read_bytes()

    holders = {name for name, p in jobs.stack.current().items() if PASSWORD.encode() in environ(p.pid)}
    assert holders == {"orchestrator"}
    assert set(jobs.stack.current()) == {"broker", "master", "orchestrator", "agent-1"}


@pytest.mark.parametrize("owner", ["mode", "owner"])
def test_a_password_file_others_could_read_is_refused_with_one_line(jobs, owner):
    if owner == "owner" and os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    pw = password_file(jobs, 0o644 if owner == "mode" else 0o600)
    if owner == "owner":
        os.chown(pw, 65534, 65534)
    jobs.workspace("ws1", "clean", password=PASSWORD, password_file=str(pw))
    proc = jobs.stack.start("orchestrator")
    assert proc.wait(30) != 0
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    why = "has mode 0644; others may read it: chmod 600" if owner == "mode" else "is owned by uid 65534"
    assert len(lines) == 1 and "orchestrator.workspaces.ws1: password_file" in lines[0] and why in lines[0], lines


def test_markup_in_a_description_and_in_p4_output_prints_as_text(jobs):
    """Finding 9: `submit --desc 'fix [/bold] thing'` made `status JOB` crash with a MarkupError."""
    info = jobs.workspace("ws1", "clean")
    hook_line = "[red]lint[/bold] failed in //depot/[main]/x.c"
    jobs.stack.tree["orchestrator"]["site"] = {"pre_submit": [["sh", "-c", f"echo '{hook_line}' >&2; exit 1"]]}
    jobs.start()
    desc = "fix [/bold] thing [red]x"
    args = ["--workspace", "ws1", "--source", info["source"], "--target", info["target"], "--desc", desc]
    follow = p4bus(jobs, "submit", *args, "--follow")
    assert follow.returncode == 1 and "Traceback" not in follow.stderr, follow.stderr
    job_id = follow.stdout.splitlines()[0]
    status = p4bus(jobs, "status", job_id)
    tail = p4bus(jobs, "tail", job_id)
    table = p4bus(jobs, "status", "--all")
    agents = p4bus(jobs, "agents")
    for done in (follow, status, tail, table, agents):
        assert "Traceback" not in done.stderr and "MarkupError" not in done.stderr, done.stderr
    assert status.returncode == 0 and f"desc={desc}" in status.stdout and hook_line in status.stdout
    assert tail.returncode == 1 and f"stderr| {hook_line}" in tail.stdout and f"desc={desc}" in tail.stdout
    assert table.returncode == 0 and job_id in table.stdout and agents.returncode == 0 and "agent-1" in agents.stdout
