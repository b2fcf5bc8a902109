"""The job commands as a person uses them: submit, status, tail, resume, cancel, retry, demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from p4bus.harness.tail_output import sections as _sections
from p4bus.harness.tail_output import streams
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(180)


def p4bus(jobs, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p4bus", "--config", str(jobs.stack.config_file()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _spool(jobs, run, stream: str) -> str:
    path = jobs.tmp / "spool" / run.agent / run.cmd_id / stream
    # Made at the first output, or by the output thread just after CmdDone.
    return path.read_text() if path.exists() else ""


def test_submit_follow_then_tail_shows_every_byte_once(jobs):
    info = jobs.workspace("ws1", "clean")
    jobs.start()
    done = p4bus(
        jobs, "submit", "--workspace", "ws1", "--source", info["source"], "--target", info["target"], "--follow"
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    assert job_id.startswith("INT-")
    tail = p4bus(jobs, "tail", job_id)
    assert tail.returncode == 0, tail.stderr
    with jobs.orch() as oc:
        view = oc.job(job_id)
    sections = _sections(tail.stdout)
    assert [h for h, _ in sections] == [
        f"{r.stage}" + (f" step {r.step}" if r.step else "") + f": {' '.join(r.argv)}" for r in view.timeline
    ]
    bodies = [body for _, body in sections]
    for run, body in zip(view.timeline, bodies, strict=False):
        # Exactly the spool's bytes: nothing missing, nothing twice, stderr marked.
        out, err = streams(body)
        assert (out, err) == (_spool(jobs, run, "stdout"), _spool(jobs, run, "stderr")), run.stage
    assert "DONE" in tail.stdout and str(view.submitted_change) in tail.stdout


def test_status_table_timeline_and_json(jobs):
    jobs.workspace("ws1", "conflict")
    jobs.start()
    job_id = jobs.submit("ws1")
    jobs.wait_state(job_id, ("WAITING_RESOLVE",))
    table = p4bus(jobs, "status")
    assert job_id in table.stdout and "WAITING_RESOLVE" in table.stdout
    one = p4bus(jobs, "status", job_id)
    assert "conflict.c" in one.stdout and "RESOLVE_PASS_2" in one.stdout and "p4bus resume" in one.stdout
    data = json.loads(p4bus(jobs, "status", job_id, "--json").stdout)
    assert data["state"] == "WAITING_RESOLVE" and data["conflicts"]
    # tail of a waiting job ends (exit 3: waiting for a person) instead of hanging
    assert p4bus(jobs, "tail", job_id).returncode == 3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--change", "abc"], "is not a valid integer"),
        (["--source", "//depot/dev/...|x"], "shell metacharacters"),
        (["--workspace", "nope"], "not configured"),
    ],
)
def test_submit_refuses_bad_parameters_with_one_line(jobs, args, needle):
    info = jobs.workspace("ws1", "clean")
    jobs.start()
    base = {"--source": info["source"], "--target": info["target"], "--workspace": "ws1"}
    for flag, value in zip(args[::2], args[1::2], strict=False):
        base[flag] = value
    done = p4bus(jobs, "submit", *[x for kv in base.items() for x in kv])
    assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr
    assert "no active jobs" in p4bus(jobs, "status").stdout


def test_cancel_and_retry_from_cli(jobs):
    jobs.workspace("ws1", "conflict")
    jobs.start()
    job_id = jobs.submit("ws1")
    jobs.wait_state(job_id, ("WAITING_RESOLVE",))
    assert p4bus(jobs, "cancel", job_id, "--revert").returncode == 0
    jobs.wait_state(job_id, ("CANCELLED",))
    # The cleanup reverted and deleted the pending change: nothing is left opened.
    with jobs.orch() as oc:
        from tests.conftest import wait_for

        wait_for(
            lambda: all(r.state == "DONE" for r in oc.job(job_id).timeline if r.stage == "CLEANUP"), 30, "the cleanup"
        )
    assert "not opened" in jobs.p4("ws1", "opened")
    bad = p4bus(jobs, "retry", job_id, "--from", "nope")
    assert bad.returncode == 2 and "unknown stage" in bad.stderr
    # Its change is gone, so it cannot go on where it stopped; from an earlier stage it can.
    stuck = p4bus(jobs, "retry", job_id)
    assert stuck.returncode == 2 and "retry from CREATE_CHANGE or earlier" in stuck.stderr
    # Stage names in any case, the job by the end of its id.
    again = p4bus(jobs, "retry", job_id[-2:], "--from", "sync")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{job_id} ")
    view = jobs.wait_state(job_id, ("WAITING_RESOLVE", "FAILED"))
    assert view.state == "WAITING_RESOLVE"
    assert "then `p4bus resume" in p4bus(jobs, "status", job_id.lower()).stdout


def test_demo_runs_end_to_end_and_serves_the_dashboard_until_ctrl_c():
    demo = subprocess.Popen(
        [sys.executable, "-m", "p4bus", "demo", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        while not (lines and lines[-1].startswith("serving the dashboard at ")):
            line = demo.stdout.readline()  # type: ignore[union-attr]
            assert line, "".join(lines[-40:]) + demo.stderr.read()  # type: ignore[union-attr]
            lines.append(line)
        url, token = re.match(r"serving the dashboard at (\S+) \(token (\S+)\)", lines[-1]).groups()  # type: ignore[union-attr]
        login = urllib.request.Request(url + "login", data=f"token={token}".encode(), method="POST")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(login, timeout=10) as page:
            jobs = page.read().decode()  # redirected to the jobs table
        assert jobs.count('data-state="DONE"') == 2, jobs
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    stdout = "".join(lines) + out
    assert demo.returncode == 0, stdout[-3000:] + err[-2000:]
    assert "WAITING_RESOLVE" in stdout and "conflict.c" in stdout
    assert stdout.count("DONE            submitted change") == 2
    kept = re.search(r"working in (\S+)", stdout)
    assert kept and not os.path.exists(kept.group(1))  # Ctrl-C still cleans up


def test_services_that_do_not_answer_are_named_within_seconds(stack):
    stack.start("broker")
    stack.start("master")
    stack.wait_ready()
    config = str(stack.config_file())

    def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "p4bus", "--config", config, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        return done, time.monotonic() - started

    empty, _ = cli("agents")
    assert empty.returncode == 0 and empty.stdout.strip() == "no agent is connected to the master"
    down, took = cli("status")
    assert down.returncode == 4 and "the orchestrator did not answer within 2s" in down.stderr
    assert took < 10  # 2 s for the answer, the rest is starting Python on a loaded machine
    stack.kill("master")
    gone, took = cli("agents")
    assert gone.returncode == 4 and "the master did not answer" in gone.stderr and took < 10
    ran, _ = cli("run", "--", "echo", "hi")
    assert ran.returncode == 4 and "the master did not answer within 2s" in ran.stderr


def test_help_documents_the_exit_codes():
    done = subprocess.run([sys.executable, "-m", "p4bus", "--help"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "Exit codes: 0 ok; 1 the job failed or was cancelled" in text and "4 a service did not answer" in text


def _complete(jobs, words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (click's bash_complete protocol)."""
    line = f"p4bus --config {jobs.stack.config_file()} {words}"
    env = {
        **os.environ,
        "_P4BUS_COMPLETE": "bash_complete",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1)),
    }
    done = subprocess.run(
        [sys.executable, "-m", "p4bus"], capture_output=True, text=True, timeout=30, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stderr
    return [item.split(",", 1)[1] for item in done.stdout.splitlines()]


def test_job_ids_by_their_end_one_exit_code_for_an_unknown_job_and_completion(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    job_id = jobs.submit("ws1")
    jobs.wait_state(job_id)
    number = str(int(job_id.rsplit("-", 1)[1]))
    shown = p4bus(jobs, "status", number)
    assert shown.returncode == 0 and shown.stdout.startswith(job_id), shown.stderr
    for args in (["status", "9999"], ["tail", "9999"], ["cancel", "nosuch"], ["resume", "9999"], ["retry", "x"]):
        done = p4bus(jobs, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "no job" in done.stderr and "Traceback" not in done.stderr
    # Shell completion: job ids (also by their number), stages in any case, workspaces.
    assert _complete(jobs, "status INT") == [job_id]
    assert _complete(jobs, f"tail {number}") == [job_id]
    assert _complete(jobs, f"retry {job_id} --from resolve") == ["RESOLVE_PASS_1", "RESOLVE_PASS_2", "RESOLVE_CHECK"]
    assert _complete(jobs, "submit --workspace ") == ["ws1"]
