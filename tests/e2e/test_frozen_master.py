"""A frozen master does not freeze the orchestrator (issue 13, item 4).

Two masters share the agents; while jobs run, the orchestrator's first master is frozen with
SIGSTOP (its TCP connections stay up, so nothing fails fast: every request to it waits for its
timeout). The orchestrator's loop never waits for a master -- dispatch, reconciliation queries,
kills and whole-output reads go through one asynchronous channel (orchestrator/channel.py) --
so `p4bus status` keeps answering at once, and the jobs fail over to the second master and
end DONE with each p4 command run once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from common.rpc import MasterClient
from common.zmqutil import free_port_base
from tests.conftest import wait_for
from tests.e2e.conftest import TERMINAL, JobStack
from tests.e2e.test_reliability import _assert_each_command_ran_once

pytestmark = pytest.mark.timeout(240)

WORKSPACES = ("ws1", "ws2", "ws3", "ws4")
# A `status` that waited for a master would take the old blocking query's 3 s at least; a
# loaded 2-core CI machine answers in tens of milliseconds. The goal (issue 13) is 100 ms p99.
MAX_S = 1.5
P99_S = 0.5
PACE_S = 0.01  # between status requests: a person's refresh rate would be far lower


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]  # nearest rank


@pytest.fixture
def two_masters(jobs: JobStack) -> Iterator[tuple[JobStack, dict]]:
    base = free_port_base(2)
    second = {
        "master_agents": f"tcp://127.0.0.1:{base}",
        "master_clients": f"tcp://127.0.0.1:{base + 1}",
        "master": {"id": "m2"},
    }
    tree = jobs.stack.tree
    tree["orchestrator"]["masters"] = [jobs.stack.endpoint("master_clients"), second["master_clients"]]
    tree["agent"]["masters"] = [jobs.stack.endpoint("master_agents"), second["master_agents"]]
    # Cut captures: every opened-file list is read whole from the spool, through the channel.
    tree["agent"]["capture_bytes"] = 256
    for name in WORKSPACES:
        # ~1 s per stage that touches the files: in flight and quiet long enough to be reconciled.
        jobs.workspace(name, "big:20", env={"P4SIM_DELAY_PER_FILE": "0.05"})
    jobs.procs["m2"] = jobs.stack.start("master", extra=second, env=jobs.env)
    yield jobs, second
    # A frozen process ignores SIGTERM until it runs again: let the stack's teardown stop it.
    jobs.procs["master"].signal_group(signal.SIGCONT)


def test_status_answers_at_once_while_a_frozen_master_is_failed_over(two_masters: tuple[JobStack, dict]) -> None:
    jobs, second = two_masters
    jobs.start(agents={"agent-1": list(WORKSPACES[:2]), "agent-2": list(WORKSPACES[2:])})
    with MasterClient([second["master_clients"]], jobs.stack.security(), timeout=5.0) as m2:
        wait_for(lambda: len([a for a in m2.agents() if a.alive]) == 2, 30, "the second master to list both agents")
    job_ids = {name: jobs.submit(name) for name in WORKSPACES}

    def running() -> bool:
        with jobs.orch() as oc:
            return any(r.state == "RUNNING" for job_id in job_ids.values() for r in oc.job(job_id).timeline)

    wait_for(running, 30, "a command to run")
    jobs.procs["master"].signal_group(signal.SIGSTOP)

    latencies: list[float] = []
    with jobs.orch() as oc:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            views = oc.jobs(include_finished=True)
            latencies.append(time.perf_counter() - t0)
            if all(v.state in TERMINAL for v in views if v.job_id in job_ids.values()):
                break
            time.sleep(PACE_S)  # pacing the load loop, not waiting for anything
    p99, worst = _p99(latencies), max(latencies)
    print(
        f"status while a master is frozen: {len(latencies)} requests, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    )

    for name, job_id in job_ids.items():
        view = jobs.wait_state(job_id, timeout=5)
        assert view.state == "DONE", (name, view.reason)
        assert all(r.attempt == 1 for r in view.timeline), (name, view.timeline)
        _assert_each_command_ran_once(jobs, name, view)
    assert worst < MAX_S and p99 < P99_S, (
        f"status waited while a master was frozen: p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"
    )
    # The frozen master is still frozen: everything after the freeze went through the second,
    # the cut opened-file lists read whole from the spools too.
    assert jobs.procs["master"].poll() is None
    log = jobs.procs["orchestrator"].log_path.read_text()
    assert '"output.read"' in log and '"fetch.failed"' not in log
