"""Jobs survive dying processes and flaky servers: nothing lost, nothing run twice."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(240)

FAST_RETRY = {"max_attempts": 3, "backoff_s": 0.2, "factor": 1.0}


def _fast_retries(jobs, *stages):
    jobs.stack.tree["orchestrator"]["site"] = {"retry": dict.fromkeys(stages, FAST_RETRY)}


def test_refused_connection_retried_then_failed_with_p4_error_line(jobs):
    _fast_retries(jobs, "GET_LATEST_CL")
    jobs.workspace("ws1", "clean", env={"P4SIM_FAULT": "refused"})
    jobs.start()
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "FAILED"
    assert "gave up after 3 attempts" in view.reason
    assert "Connect to server failed" in view.key_line or "Connect to server failed" in view.timeline[-1].key_line
    assert [r.attempt for r in view.timeline] == [1, 2, 3]


def test_transient_refusal_is_retried_to_done(jobs, tmp_path):
    _fast_retries(jobs, "GET_LATEST_CL")
    state = tmp_path / "fault-state"
    jobs.workspace(
        "ws1", "clean", env={"P4SIM_FAULT": "refused", "P4SIM_FAULT_COUNT": "2", "P4SIM_FAULT_STATE": str(state)}
    )
    jobs.start()
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "DONE", view.reason
    first = [r for r in view.timeline if r.stage == "GET_LATEST_CL"]
    # Two refusals (p4 exits 1), each retried; the third attempt gets the change and moves on.
    assert [(r.attempt, r.exit_code, r.outcome) for r in first] == [(1, 1, "RETRY"), (2, 1, "RETRY"), (3, 0, "NEXT")]


def _pid_of(jobs, agent: str, cmd_id: str) -> int:
    pid_file = jobs.tmp / "spool" / agent / cmd_id / "pid"
    wait_for(pid_file.exists, 10, "the command's pid file")
    return int(pid_file.read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False  # gone (reading the stat of a process reaped meanwhile fails with ESRCH)


def _running_cmd(jobs, job_id: str, stage: str):
    def find():
        with jobs.orch() as oc:
            v = oc.job(job_id)
        runs = [r for r in v.timeline if r.stage == stage and r.state == "RUNNING"]
        return runs[0] if runs else None

    return wait_for(find, 30, f"{job_id} to be running {stage}", interval=0.05)


def test_cancel_during_sync_kills_process_group_and_frees_workspace(jobs):
    jobs.workspace("ws1", "big:40", env={"P4SIM_DELAY_PER_FILE": "0.5"})
    jobs.start()
    job_id = jobs.submit("ws1")
    run = _running_cmd(jobs, job_id, "SYNC")
    pid = _pid_of(jobs, "agent-1", run.cmd_id)
    assert _alive(pid)
    with jobs.orch() as oc:
        assert oc.cancel(job_id, revert=True).state == "CANCELLED"
    wait_for(lambda: not _alive(pid), 10, "the sync process to die")
    view = jobs.wait_state(job_id)
    assert view.state == "CANCELLED"
    assert [r.state for r in view.timeline if r.stage == "SYNC"] == ["CANCELLED"]
    # The workspace is free again: the next job starts.
    with jobs.masters() as mc:
        assert mc.query([run.cmd_id], agent="agent-1")[0].killed
    second = jobs.submit("ws1")
    with jobs.orch() as oc:
        wait_for(lambda: oc.job(second).state != "QUEUED", 10, "the next job to start")


def test_twenty_jobs_across_three_agents_all_done(jobs):
    names = [f"ws{i}" for i in range(20)]
    for n in names:
        jobs.workspace(n, "clean")
    agents = {f"agent-{a}": names[a::3] for a in range(3)}
    jobs.start(agents=agents)
    ids = [jobs.submit(n) for n in names]
    views = [jobs.wait_state(j, timeout=180) for j in ids]
    assert [v.state for v in views] == ["DONE"] * 20, [(v.job_id, v.reason) for v in views if v.state != "DONE"]
    used = {v.agent for v in views}
    assert used == set(agents)
    for n, v in zip(names, views, strict=False):
        assert v.agent in [a for a, ws in agents.items() if n in ws]


def _assert_each_command_ran_once(jobs, name: str, view) -> None:
    ran = jobs.executions(name)
    planned = [" ".join(r.argv[1:]) for r in view.timeline if r.state == "DONE"]
    assert sorted(ran) == sorted(planned), f"{name}: ran {ran}, timeline {planned}"
    assert sum(1 for a in ran if a.startswith("submit")) == 1
    assert sum(1 for a in ran if a.startswith("change -i")) == 1


def _p4_runs(jobs) -> int:
    """p4 commands started so far, on every workspace."""
    return len(jobs.exec_log.read_text().splitlines()) if jobs.exec_log.exists() else 0


def _wait_for_p4_runs(jobs, n: int) -> None:
    wait_for(lambda: _p4_runs(jobs) >= n, 60, f"{n} p4 commands started")


def test_orchestrator_sigkilled_repeatedly_jobs_finish_nothing_runs_twice(jobs):
    orchestrator_sigkilled_mid_jobs(jobs, workspaces=6, kills=4)


def orchestrator_sigkilled_mid_jobs(jobs, workspaces: int, kills: int) -> None:
    """Jobs on ``workspaces`` workspaces over two agents; the orchestrator SIGKILLed and
    restarted ``kills`` times at random points: every job DONE at its first attempt, each p4
    command run once (also tests/e2e/test_postgres_store.py, on PostgreSQL)."""
    names = [f"ws{i}" for i in range(workspaces)]
    for n in names:
        jobs.workspace(n, "clean", env={"P4SIM_DELAY_PER_FILE": "0.03"})
    half = (workspaces + 1) // 2
    jobs.start(agents={"agent-1": names[:half], "agent-2": names[half:]})
    ids = [jobs.submit(n) for n in names]
    rng = random.Random(int(os.environ.get("P4BUS_TEST_SEED", "1234")))
    for _ in range(kills):
        # A random point in the jobs' lives: once a few more p4 commands have started, with most
        # of them still ahead (it may fall in the restarted orchestrator's recovery: so be it).
        _wait_for_p4_runs(jobs, _p4_runs(jobs) + rng.randint(2, 8))
        jobs.restart("orchestrator")
    runs_at_last_kill = _p4_runs(jobs)
    views = [jobs.wait_state(j, timeout=120) for j in ids]
    assert _p4_runs(jobs) > runs_at_last_kill  # the last restart, too, had work left to resume
    assert [v.state for v in views] == ["DONE"] * workspaces, [(v.job_id, v.stage, v.reason) for v in views]
    for n, v in zip(names, views, strict=True):
        _assert_each_command_ran_once(jobs, n, v)
        assert all(r.attempt == 1 for r in v.timeline)


def _agent_killed_during_slow_sync(jobs):
    """A job whose agent is SIGKILLed while SYNC runs: (job id, the SYNC run, its pid)."""
    jobs.stack.tree["orchestrator"]["site"] = {"retry": {"SYNC": {"max_attempts": 3, "backoff_s": 0.3}}}
    jobs.workspace("ws1", "big:30", env={"P4SIM_DELAY_PER_FILE": "0.1"})
    jobs.start()
    job_id = jobs.submit("ws1")
    run = _running_cmd(jobs, job_id, "SYNC")
    pid = _pid_of(jobs, "agent-1", run.cmd_id)
    os.killpg(jobs.procs["agent-1"].pid, signal.SIGKILL)
    return job_id, run, pid


def test_agent_sigkilled_during_stage_is_lost_then_retried(jobs):
    jobs.stack.tree["orchestrator"]["unknown_deadline_s"] = 3.0  # UNKNOWN, then given up on: LOST
    job_id, _run, pid = _agent_killed_during_slow_sync(jobs)
    with jobs.orch() as oc:
        wait_for(lambda: any(r.state == "LOST" for r in oc.job(job_id).timeline), 15, "the command to be LOST")
        assert oc.job(job_id).state in ("RETRY_WAIT", "RUNNING")
    wait_for(lambda: not _alive(pid), 30, "the orphaned sync to end")
    jobs.kill_and_start("agent-1")
    view = jobs.wait_state(job_id, timeout=120)
    assert view.state == "DONE", view.reason
    sync = [r for r in view.timeline if r.stage == "SYNC"]
    assert [r.state for r in sync] == ["LOST", "DONE"] and sync[1].attempt == 2


def test_master_sigkilled_and_restarted_during_job_finishes(jobs):
    jobs.workspace("ws1", "big:30", env={"P4SIM_DELAY_PER_FILE": "0.05"})
    jobs.start()
    job_id = jobs.submit("ws1")
    _running_cmd(jobs, job_id, "SYNC")
    jobs.restart("master")
    view = jobs.wait_state(job_id, timeout=120)
    assert view.state == "DONE", view.reason
    assert all(r.attempt == 1 for r in view.timeline)
    _assert_each_command_ran_once(jobs, "ws1", view)


def test_command_missing_from_a_restarted_agents_spool_is_lost_not_resent(jobs):
    """The agent accepted the command, then lost its record (a wiped disk): running it again
    could run it twice, so it is LOST and the stage policy (retry, for SYNC) decides."""
    import shutil

    jobs.stack.tree["orchestrator"]["lost_after_s"] = 60.0  # only the spool's answer may decide
    job_id, run, pid = _agent_killed_during_slow_sync(jobs)
    wait_for(lambda: not _alive(pid), 30, "the orphaned sync to end")
    shutil.rmtree(jobs.tmp / "spool" / "agent-1" / run.cmd_id)
    jobs.kill_and_start("agent-1")
    view = jobs.wait_state(job_id, timeout=120)
    assert view.state == "DONE", view.reason
    sync = [r for r in view.timeline if r.stage == "SYNC"]
    assert [r.state for r in sync] == ["LOST", "DONE"]
    assert sum(1 for a in jobs.executions("ws1") if a.startswith("sync")) == 2  # the lost one, and its retry


def test_orchestrator_fails_over_to_the_second_master(jobs):
    from common.zmqutil import free_port_base

    base = free_port_base(2)
    second = {
        "master_agents": f"tcp://127.0.0.1:{base}",
        "master_clients": f"tcp://127.0.0.1:{base + 1}",
        "master": {"id": "m2"},
    }
    first_agents, first_clients = jobs.stack.endpoint("master_agents"), jobs.stack.endpoint("master_clients")
    jobs.stack.tree["orchestrator"]["masters"] = [first_clients, second["master_clients"]]
    jobs.stack.tree["agent"]["masters"] = [first_agents, second["master_agents"]]
    jobs.workspace("ws1", "big:30", env={"P4SIM_DELAY_PER_FILE": "0.05"})
    jobs.procs["m2"] = jobs.stack.start("master", extra=second, env=jobs.env)
    jobs.start()
    job_id = jobs.submit("ws1")
    _running_cmd(jobs, job_id, "SYNC")
    os.killpg(jobs.procs["master"].pid, signal.SIGKILL)  # and it stays down
    view = jobs.wait_state(job_id, timeout=120)
    assert view.state == "DONE", view.reason
    assert all(r.attempt == 1 for r in view.timeline)
    _assert_each_command_ran_once(jobs, "ws1", view)


def test_a_hole_in_an_agents_cmd_sequence_makes_the_orchestrator_ask_its_spool(jobs):
    import zmq

    from common import ids, zmqutil
    from common import protocol as P

    jobs.stack.tree["orchestrator"]["reconcile_after_s"] = 600.0  # no periodic sweep: only the hole may ask
    jobs.workspace("ws1", "big:30", env={"P4SIM_DELAY_PER_FILE": "0.1"})
    jobs.start()
    job_id = jobs.submit("ws1")
    _running_cmd(jobs, job_id, "SYNC")

    def reconciles() -> int:
        with jobs.orch() as oc:
            return oc.request(P.Stats(req_id=ids.new_id("r"))).counters["reconciles"]

    def cmd_event(seq: int) -> list[bytes]:
        return P.encode_event(
            P.CmdStarted(
                topic=f"cmd.other.c{seq}",
                source="agent-1",
                epoch="another-start",
                seq=seq,
                ts=time.time(),
                job_id="other",
                cmd_id=f"c{seq}",
                agent="agent-1",
                pid=1,
                argv=["x"],
            )
        )

    pub = zmqutil.pub(zmq.Context.instance(), jobs.stack.endpoint("broker_xsub"), jobs.stack.security("agent-1"))
    try:
        # A new epoch from agent-1 (it restarted, as far as anyone can tell): a hole of unknown size.
        before = reconciles()

        def restart_seen() -> bool:
            pub.send_multipart(cmd_event(1))  # resent until it arrives; repeats are duplicates
            return reconciles() > before

        wait_for(restart_seen, 20, "a reconciliation after the new epoch", interval=0.2)
        # Then seq 1 -> 50 in that epoch: 48 cmd events were missed.
        before = reconciles()
        pub.send_multipart(cmd_event(50))
        wait_for(lambda: reconciles() > before, 20, "a reconciliation after the hole", interval=0.1)
    finally:
        pub.close(linger=0)
    assert jobs.wait_state(job_id, timeout=120).state == "DONE"
