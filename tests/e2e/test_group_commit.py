"""Group commit's crash window (orchestrator/service.py): the orchestrator SIGKILLed exactly
(a) after a batch committed, before any of its effects (Execs, job events, answers) went out,
and (b) in the middle of a batch, after a step was applied and before the commit. After a
restart every job ends DONE at its first attempt, each p4 command ran once (the counting p4
wrapper) and the timelines hold every stage: no transition lost, none made twice.

The kill is the orchestrator's own, at the exact point: ``P4BUS_TEST_SIGKILL=POINT:N`` (read
once at start; inert when unset, as in production) makes it SIGKILL itself the Nth time it
reaches POINT with effects held. The restarted orchestrator runs without it.
"""

from __future__ import annotations

import signal

import pytest

from orchestrator.service import SELF_KILL_ENV
from tests.conftest import wait_for
from tests.e2e.test_postgres_store import pg_jobs  # noqa: F401 (a fixture, used by name below)
from tests.e2e.test_reliability import _assert_each_command_ran_once, _p4_runs

pytestmark = pytest.mark.timeout(240)

WORKSPACES = 4


def _killed_at(jobs, point: str, n: int) -> None:
    names = [f"ws{i}" for i in range(WORKSPACES)]
    for name in names:
        jobs.workspace(name, "clean", env={"P4SIM_DELAY_PER_FILE": "0.02"})
    half = WORKSPACES // 2
    jobs.start("broker", "master", agents={"agent-1": names[:half], "agent-2": names[half:]})
    # Submitted through an orchestrator without the hook, SIGKILLed once they are in: the hook
    # counts every step with held effects, and submits are such steps, so under load the Nth
    # could fall among the submits and the test would lose a submit's answer, not test a job.
    jobs.procs["orchestrator"] = jobs.stack.start("orchestrator")
    jobs.wait_ready(2)
    ids = [jobs.submit(name) for name in names]
    jobs.stack.kill("orchestrator")
    doomed = jobs.procs["orchestrator"] = jobs.stack.start("orchestrator", env={SELF_KILL_ENV: f"{point}:{n}"})

    wait_for(lambda: doomed.poll() is not None, 120, f"the orchestrator to SIGKILL itself at {point}")
    assert doomed.returncode == -signal.SIGKILL
    said = [line for line in doomed.log_path.read_text().splitlines() if "test.sigkill_self" in line]
    assert len(said) == 1 and point in said[0], said  # killed by the hook, at that point, with effects held
    runs_at_kill = _p4_runs(jobs)

    jobs.procs["orchestrator"] = jobs.stack.start("orchestrator")  # without the hook
    views = [jobs.wait_state(j, timeout=150) for j in ids]
    assert _p4_runs(jobs) > runs_at_kill  # the kill fell with work still ahead
    assert [v.state for v in views] == ["DONE"] * WORKSPACES, [(v.job_id, v.stage, v.reason) for v in views]
    for name, v in zip(names, views, strict=True):
        _assert_each_command_ran_once(jobs, name, v)
        assert all(r.attempt == 1 for r in v.timeline), v.timeline
        assert [r.stage for r in v.timeline] == [r.stage for r in views[0].timeline]  # no stage lost


def test_sigkilled_after_a_commit_before_its_effects_went_out(jobs):
    """What the batch committed is acted on after the restart: its PENDING commands are sent
    (once), the rest is asked of the agents."""
    _killed_at(jobs, "after_commit", 12)


def test_sigkilled_mid_batch_before_the_commit(jobs):
    """Nothing of the batch is stored or sent: the events it had taken in are asked of the
    agents' spools again after the restart, and applied once."""
    _killed_at(jobs, "mid_batch", 12)


def test_sigkilled_after_a_commit_on_postgresql(pg_jobs):  # noqa: F811 (the fixture imported above)
    _killed_at(pg_jobs, "after_commit", 12)


def test_sigkilled_mid_batch_on_postgresql(pg_jobs):  # noqa: F811
    _killed_at(pg_jobs, "mid_batch", 12)
