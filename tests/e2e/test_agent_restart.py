"""An agent SIGKILLed mid-stage and started again: its commands outlive it (agent/keeper.py),
the new agent re-attaches to them and reports their real results, so the job ends DONE, every
p4 command ran once, and `p4bus tail` shows every byte once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import wait_for
from tests.e2e.test_cli_jobs import _sections, _spool, p4bus, streams
from tests.e2e.test_reliability import _assert_each_command_ran_once, _running_cmd

pytestmark = pytest.mark.timeout(240)

# The e2e orchestrator (tests/e2e/conftest.py) finds an agent unreachable after heartbeats
# (3 x 0.5 s) plus lost_after_s (2 s): about 3.5 s. Down for less, nothing notices; down for
# longer, its commands are UNKNOWN (not LOST) until the stage's unknown deadline, so the
# restarted agent's answer still counts.
LOST_AFTER_S = 3.5


def _tail_is_the_spool(jobs, job_id: str) -> None:
    tail = p4bus(jobs, "tail", job_id)
    assert tail.returncode == 0, tail.stderr
    with jobs.orch() as oc:
        view = oc.job(job_id)
    bodies = [body for _, body in _sections(tail.stdout)]
    assert len(bodies) == len(view.timeline)
    for run, body in zip(view.timeline, bodies, strict=True):
        out, err = streams(body)
        assert (out, err) == (_spool(jobs, run, "stdout"), _spool(jobs, run, "stderr")), run.stage


@pytest.mark.parametrize(("down_s", "lost_after_s"), [(0.0, 2.0), (LOST_AFTER_S + 2.5, 2.0)])
def test_agent_sigkilled_mid_sync_and_restarted_job_done_each_command_once(
    jobs, down_s: float, lost_after_s: float
) -> None:
    jobs.stack.tree["orchestrator"]["lost_after_s"] = lost_after_s
    jobs.workspace("ws1", "big:20", env={"P4SIM_DELAY_PER_FILE": "0.15"})
    jobs.start()
    job_id = jobs.submit("ws1")
    run = _running_cmd(jobs, job_id, "SYNC")
    pid_file = jobs.tmp / "spool" / "agent-1" / run.cmd_id / "pid"
    wait_for(pid_file.exists, 10, "the sync's pid record")
    sync_pid = int(pid_file.read_text().split()[0])
    os.killpg(jobs.procs["agent-1"].pid, signal.SIGKILL)
    jobs.procs["agent-1"].wait(10)
    os.kill(sync_pid, 0)  # the sync outlived its agent
    down_until = time.monotonic() + down_s
    wait_for(lambda: time.monotonic() >= down_until, down_s + 5, "the agent's time down", interval=0.1)
    jobs.kill_and_start("agent-1")
    view = jobs.wait_state(job_id, timeout=150)
    assert view.state == "DONE", (view.stage, view.reason)
    assert all(r.attempt == 1 for r in view.timeline), [(r.stage, r.state, r.attempt) for r in view.timeline]
    _assert_each_command_ran_once(jobs, "ws1", view)
    _tail_is_the_spool(jobs, job_id)
