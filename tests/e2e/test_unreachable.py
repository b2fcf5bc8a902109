"""An unreachable agent is not a dead command (issue 10, item 2).

An agent frozen (SIGSTOP) while its p4 command runs: the command ends during the freeze, the
orchestrator shows it UNKNOWN and runs nothing again; when the agent is back its spool answers
and that result is used. An agent gone for good: after the stage's deadline the job gives up on
it, and a new agent on the same workspace finishes the job, each stage checking first whether
its effect already happened. A dispatch refused again and again fails its stage.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common import protocol as P
from tests.conftest import wait_for
from tests.e2e.conftest import JobStack
from tests.e2e.test_cli_jobs import p4bus
from tests.e2e.test_reliability import _alive, _assert_each_command_ran_once

pytestmark = pytest.mark.timeout(180)

FREEZE_S = 15.0


class Gates:
    """Holds a chosen p4 command at its start (after the counting wrapper logged it) until the
    test opens the gate: so a freeze or a kill lands while that command is in flight, and the
    command then ends with its agent frozen or dead. A gate holds one command, once."""

    def __init__(self, jobs: JobStack) -> None:
        self.jobs = jobs
        self.dir = jobs.tmp / "gates"
        self.dir.mkdir()
        wrapper = jobs.bin / "p4"
        logged, run = wrapper.read_text().rsplit("exec ", 1)
        # Keyed on the workspace's server (clients of different workspaces may share a name)
        # and p4's first argument (sync, change, submit). The whole stdin (a change spec) is
        # read first: a freeze must not cut the command off from it.
        hold = (
            f'g="{self.dir}/$(printf %s "$P4PORT" | tr -c "A-Za-z0-9" _).$1"\n'
            'if [ -e "$g.armed" ]; then\n'
            '    rm -f "$g.armed"\n'
            '    cat > "$g.stdin"\n'
            '    echo $$ > "$g.held"\n'
            # Bounded (about 5 min): a test that fails before opening its gate leaves nothing behind.
            '    n=0; while [ ! -e "$g.open" ] && [ $n -lt 6000 ]; do sleep 0.05; n=$((n+1)); done\n'
            f'    exec {run.strip()} < "$g.stdin"\n'
            "fi\n"
        )
        wrapper.write_text(logged + hold + "exec " + run)

    def _path(self, name: str, command: str, what: str) -> Path:
        server = re.sub("[^A-Za-z0-9]", "_", self.jobs.seeds[name]["P4PORT"])
        return self.dir / f"{server}.{command}.{what}"

    def arm(self, name: str, command: str) -> None:
        self._path(name, command, "armed").touch()

    def held(self, name: str, command: str) -> int | None:
        """The pid of the command held at the gate (the wrapper execs p4 as that pid)."""
        held = self._path(name, command, "held")
        return int(held.read_text()) if held.exists() and held.read_text().strip() else None

    def open(self, name: str, command: str) -> None:
        self._path(name, command, "open").touch()

    def submit_held(self, held: dict[str, str], timeout: float) -> tuple[dict[str, str], dict[str, int]]:
        """Arm a gate per workspace -> p4 command, submit a job on each workspace, and wait until
        each command waits at its gate; returns the job ids and the held commands' pids."""
        for name, command in held.items():
            self.arm(name, command)
        ids = {name: self.jobs.submit(name) for name in held}
        pids = {
            name: wait_for(lambda n=name: self.held(n, held[n]), timeout, f"{name}: p4 {held[name]} at its gate")
            for name in held
        }
        return ids, pids


def _pending_changes(jobs: JobStack, name: str) -> str:
    """The workspace client's pending changes, looked up past the counting wrapper (the test's
    own look is not one of the job's commands)."""
    ws = jobs.workspaces[name]
    done = subprocess.run(
        [str(jobs.real_p4), "changes", "-l", "-s", "pending", "-c", ws.facts["P4CLIENT"]],
        env={**os.environ, **ws.p4_env()},
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def in_flight(view: P.JobView | None, stage: str) -> bool:
    """The orchestrator knows the stage's command reached its agent. (An agent frozen before
    its answer to the dispatch got out leaves the command PENDING instead: sent again to the
    agent when it is back, which knows it by its id and runs nothing twice.)"""
    return view is not None and any(r.stage == stage and r.state in ("DISPATCHED", "RUNNING") for r in view.timeline)


@dataclass
class Frozen:
    """One job whose agent is frozen while its ``command`` runs."""

    name: str  # workspace, served by its own agent
    command: str
    stage: str
    job_id: str = ""
    frozen_at: float = 0.0
    thawed: bool = False
    seen: set[str] = field(default_factory=set)  # job states seen while frozen

    @property
    def agent(self) -> str:
        return f"agent-{self.name}"


def test_agents_frozen_15s_during_sync_create_change_and_submit_run_nothing_twice(jobs):
    cases = [Frozen("ws1", "sync", "SYNC"), Frozen("ws2", "change", "CREATE_CHANGE"), Frozen("ws3", "submit", "P4PUSH")]
    for c in cases:
        jobs.workspace(c.name, "clean")
    gates = Gates(jobs)
    jobs.start(agents={c.agent: [c.name] for c in cases})
    for c in cases:
        gates.arm(c.name, c.command)
        c.job_id = jobs.submit(c.name)
    with jobs.orch() as oc:
        try:
            # The three freezes overlap: each starts when its command reaches the gate.
            wait_for(lambda: _drive(jobs, oc, gates, cases), 120, "every frozen agent to be thawed", interval=0.1)
        finally:
            for c in cases:
                jobs.procs[c.agent].signal_group(signal.SIGCONT)
    for c in cases:
        assert "UNKNOWN" in c.seen, f"{c.name}: the job never showed UNKNOWN while its agent was frozen ({c.seen})"
        view = jobs.wait_state(c.job_id, timeout=60)
        assert view.state == "DONE", (c.name, view.stage, view.reason)
        # Nothing was given up on or run again: one attempt of everything, each p4 command once.
        assert all(r.attempt == 1 and r.state == "DONE" for r in view.timeline), view.timeline
        _assert_each_command_ran_once(jobs, c.name, view)
        assert _pending_changes(jobs, c.name) == "", f"{c.name}: a spare pending change was left"
        # The job's events said so, and what follows a job (tail, submit --follow) shows it.
        tail = p4bus(jobs, "tail", c.job_id)
        assert tail.returncode == 0, tail.stderr
        notes = [line for line in tail.stdout.splitlines() if line.startswith(f"── {c.job_id} ")]
        unknown = notes.index(f"── {c.job_id} UNKNOWN at {c.stage}")
        # Then the agent's own result moved it on: no retry in between.
        assert notes[unknown + 1].split()[2] in ("RUNNING", "DONE"), notes


def _drive(jobs: JobStack, oc, gates: Gates, cases: list[Frozen]) -> bool:
    """One look at every case: freeze an agent whose command reached its gate and let the
    command run to its end; note what the job shows; thaw after FREEZE_S. True when all thawed."""
    for c in cases:
        if not c.frozen_at:
            pid = gates.held(c.name, c.command)
            if pid is None or not in_flight(oc.job(c.job_id), c.stage):
                continue
            jobs.procs[c.agent].signal_group(signal.SIGSTOP)
            c.frozen_at = time.time()
            gates.open(c.name, c.command)
            wait_for(lambda pid=pid: not _alive(pid), 30, f"{c.name}: p4 {c.command} to end in the freeze")
        elif not c.thawed:
            c.seen.add(oc.job(c.job_id).state)
            # The freeze's length is what is tested, so it is a fixed time, not a condition.
            if time.time() >= c.frozen_at + FREEZE_S:
                jobs.procs[c.agent].signal_group(signal.SIGCONT)
                c.thawed = True
    return all(c.thawed for c in cases)


def test_an_agent_gone_for_good_is_given_up_on_and_a_new_agent_finishes_without_redoing(jobs):
    """The agent dies after `p4 change -i` (job 1) and `p4 submit` (job 2) ran but before it
    reported them. After the deadline a new agent on the same workspaces takes both jobs on;
    each finds its effect instead of repeating it."""
    jobs.stack.tree["orchestrator"]["unknown_deadline_s"] = 6.0
    jobs.stack.tree["orchestrator"]["site"] = {
        "retry": {s: {"backoff_s": 0.2, "factor": 1.0} for s in ("CREATE_CHANGE", "P4PUSH")}
    }
    for name in ("ws1", "ws2"):
        jobs.workspace(name, "clean")
    gates = Gates(jobs)
    held = {"ws1": "change", "ws2": "submit"}
    jobs.start(agents={"agent-1": list(held)})
    ids, pids = gates.submit_held(held, 60)
    with jobs.orch() as oc:
        for name, stage in (("ws1", "CREATE_CHANGE"), ("ws2", "P4PUSH")):
            wait_for(lambda n=name, s=stage: in_flight(oc.job(ids[n]), s), 30, f"{name}: {stage} in flight")
    agent = jobs.procs["agent-1"]
    agent.signal_group(signal.SIGSTOP)  # it never reports what follows
    for name, command in held.items():
        gates.open(name, command)
    for name, pid in pids.items():
        wait_for(lambda pid=pid: not _alive(pid), 30, f"{name}: p4 {held[name]} to end")
    agent.signal_group(signal.SIGKILL)
    agent.wait()
    # The change exists, and only the lost command's output knows its number.
    assert f"(p4bus job {ids['ws1']})" in _pending_changes(jobs, "ws1")
    with jobs.orch() as oc:
        wait_for(lambda: {oc.job(j).state for j in ids.values()} == {"UNKNOWN"}, 30, "both jobs UNKNOWN")
        assert "unreachable since" in oc.job(ids["ws1"]).waiting_for
    jobs.start_agent("agent-2", list(held))  # the same workspaces, another machine
    for name, job_id in ids.items():
        view = jobs.wait_state(job_id, timeout=90)
        assert view.state == "DONE", (name, view.stage, view.reason)
        assert view.agent == "agent-2"
        (lost,) = [r for r in view.timeline if r.state == "LOST"]
        assert (lost.agent, lost.attempt, lost.argv[1]) == ("agent-1", 1, held[name])
        # Every p4 command ran once: the lost one (on agent-1) too, and nothing repeated it.
        ran = jobs.executions(name)
        planned = [" ".join(r.argv[1:]) for r in view.timeline if r.state in ("DONE", "LOST")]
        assert sorted(ran) == sorted(planned), f"{name}: ran {ran}, timeline {planned}"
        assert sum(1 for a in ran if a.startswith(("change -i", "submit"))) == 2
        assert _pending_changes(jobs, name) == ""
        (check,) = [r for r in view.timeline if r.argv[1:3] == ["changes", "-l"]]
        assert (check.agent, check.attempt) == ("agent-2", 2)
        if name == "ws1":
            assert check.outcome == "NEXT" and "created before the agent was lost" in check.key_line
        else:
            assert check.outcome == "DONE" and "submitted before the agent was lost" in check.key_line
            assert view.timeline[-1] == check  # the job ended there: nothing was submitted again


def test_a_dispatch_refused_again_and_again_fails_the_stage_with_the_reason(jobs):
    jobs.stack.tree["orchestrator"]["dispatch_refused_deadline_s"] = 3.0
    jobs.workspace("ws1", "clean")
    # An agent the master has seen (one never seen is refused at submit) but that is gone now.
    jobs.start(agents={"agent-1": ["ws1"], "agent-gone": ["ws1"]})
    jobs.stack.kill("agent-gone")
    with jobs.masters() as mc:
        wait_for(lambda: not any(a.agent_id == "agent-gone" and a.alive for a in mc.agents()), 30, "agent-gone lost")
    job_id = jobs.submit("ws1", agent="agent-gone")
    view = jobs.wait_state(job_id, timeout=30)
    assert view.state == "FAILED" and view.stage == "GET_LATEST_CL"
    assert view.reason.startswith("the command could not be started: no agent took it for ")
    assert "agent 'agent-gone' is not connected to this master" in view.reason
    assert jobs.executions("ws1") == []
    # The workspace is free again: the next job runs.
    assert jobs.wait_state(jobs.submit("ws1"), timeout=60).state == "DONE"
