"""Following a job: `--follow` and `tail` end whatever events were lost (issue 10 item 5), and
the compact `--follow` shows one line per stage (issue 12 item 5)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, wait_for
from tests.e2e.test_cli_jobs import _sections, _spool, p4bus

pytestmark = pytest.mark.timeout(180)

FAST_RETRY = {"max_attempts": 2, "backoff_s": 0.2, "factor": 1.0}


def _follow(jobs, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "p4bus", "--config", str(jobs.stack.config_file()), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _running(jobs, job_id: str, stage: str) -> None:
    def found() -> bool:
        with jobs.orch() as oc:
            return any(r.stage == stage and r.state == "RUNNING" for r in oc.job(job_id).timeline)

    wait_for(found, 30, f"{job_id} to run {stage}", interval=0.05)


def _ended_within(proc: subprocess.Popen[str], seconds: float) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out, err


def test_follow_and_tail_end_when_the_final_events_never_reach_the_journal(jobs):
    """The broker dies mid-job and stays down: the job's remaining events, DONE among them,
    are never journalled. `submit --follow` (running) and `tail` (started after) still end,
    with exit 0, the tail with every byte of every command (from the journal and the spools)."""
    jobs.workspace("ws1", "big:20", env={"P4SIM_DELAY_PER_FILE": "0.05"})  # ~1 s a stage
    jobs.start()
    info = jobs.seeds["ws1"]
    follower = _follow(
        jobs, "submit", "--workspace", "ws1", "--source", info["source"], "--target", info["target"], "--follow"
    )
    job_id = wait_for(lambda: _only_job(jobs), 30, "the job to be submitted")
    _running(jobs, job_id, "PRE_SUBMIT")  # SHELVE, NC_FIX and P4PUSH are still to come
    jobs.stack.kill("broker")
    with jobs.orch() as oc:
        assert oc.job(job_id).state == "RUNNING"
    view = jobs.wait_state(job_id, timeout=90)
    assert view.state == "DONE", view.reason
    ended_at = time.monotonic()
    rc, out, err = _ended_within(follower, 30)
    assert rc == 0, err
    assert time.monotonic() - ended_at < 30
    assert f"{job_id} DONE: submitted change {view.submitted_change}" in out
    # One line per stage that ran, in order (the compact follow), and nothing else of p4's.
    ends = [line for line in out.splitlines()[1:] if not line.startswith(("INT-", " ")) and not line.endswith("...")]
    stages = [line.split()[0] for line in ends]
    assert stages == list(dict.fromkeys(r.stage for r in view.timeline)), out

    started = time.monotonic()
    tail = p4bus(jobs, "tail", job_id[-4:], timeout=60)  # by the end of its id
    assert tail.returncode == 0, tail.stderr
    assert time.monotonic() - started < 40
    bodies = [body for head, body in _sections(tail.stdout) if not head.startswith(job_id)]
    assert len(bodies) == len(view.timeline)
    for run, body in zip(view.timeline, bodies, strict=True):
        out_bytes = "".join(line for line in body if not line.startswith("stderr| "))
        assert out_bytes == _spool(jobs, run, "stdout"), run.stage


def test_follow_of_a_failed_job_exits_1_with_the_broker_down_from_the_start(jobs):
    jobs.stack.tree["orchestrator"]["site"] = {"retry": {"GET_LATEST_CL": FAST_RETRY}}
    jobs.workspace("ws1", "clean", env={"P4SIM_FAULT": "refused"})
    jobs.start()
    jobs.stack.kill("broker")
    info = jobs.seeds["ws1"]
    follower = _follow(
        jobs, "submit", "--workspace", "ws1", "--source", info["source"], "--target", info["target"], "--follow"
    )
    rc, out, err = _ended_within(follower, 60)
    assert rc == 1, (out, err)
    assert "FAILED at GET_LATEST_CL" in out and "reason: " in out and "Connect to server failed" in out


def test_compact_follow_shows_a_retried_stages_try_number_and_tail_one_stage(jobs, tmp_path):
    jobs.stack.tree["orchestrator"]["site"] = {"retry": {"GET_LATEST_CL": FAST_RETRY}}
    state = tmp_path / "fault-state"
    faults = {"P4SIM_FAULT": "refused", "P4SIM_FAULT_COUNT": "1", "P4SIM_FAULT_STATE": str(state)}
    jobs.workspace("ws1", "clean", env=faults)
    jobs.start()
    info = jobs.seeds["ws1"]
    args = ("submit", "--workspace", "ws1", "--source", info["source"], "--target", info["target"], "--follow")
    done = p4bus(jobs, *args)
    assert done.returncode == 0, done.stderr
    job_id, *lines = done.stdout.splitlines()
    assert f"{job_id} RETRY_WAIT at GET_LATEST_CL" in lines
    stages = [line for line in lines if not line.startswith(job_id)]
    assert stages[0].startswith("GET_LATEST_CL ") and stages[1].startswith("GET_LATEST_CL (try 2)"), done.stdout
    status = p4bus(jobs, "status", job_id)
    assert any(line.split()[:3] == ["GET_LATEST_CL", "0", "2"] for line in status.stdout.splitlines()), status.stdout
    # `tail --stage`, in any case: that stage's output alone, byte for byte, for grep.
    sync = next(r for r in jobs.wait_state(job_id).timeline if r.stage == "SYNC")
    only = p4bus(jobs, "tail", job_id.lower(), "--stage", "sync")
    assert only.returncode == 0 and only.stdout == _spool(jobs, sync, "stdout"), only.stderr


def _only_job(jobs) -> str | None:
    with jobs.orch() as oc:
        listed = oc.jobs(True)
    return listed[0].job_id if listed else None
