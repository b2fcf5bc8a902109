"""Whole p4-integrate jobs through the orchestrator, beside the same p4 commands over ssh.

Every job integrates for real: each workspace is a freshly seeded p4sim `clean` scenario used
by exactly one job (a second clean job on an integrated workspace would end NOTHING_TO_DO
after a few stages and flatter the numbers). Seeding takes ~10 ms per workspace.

1. One job alone (after a warm-up job): wall time from submit to its terminal JobChanged event,
   minus the time spent inside its p4 commands (timeline started_at..ended_at, as the agent saw
   them) = p4bus overhead; the gaps are shown per stage.
2. 100 jobs across 4 agents (25 workspaces each), all submitted at once: jobs per minute,
   stage transitions per second, orchestrator CPU seconds and peak RSS.
3. The lone job's p4 commands replayed one by one on two more fresh seeds: locally (the p4
   time) and over `ssh localhost` with a fresh connection per command (the way p4bus
   replaces); ssh overhead per command = ssh wall - local p4 time.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from agent.spool import Spool
from bench import common as B
from bench.sshd import SshTarget
from common import protocol as P
from common import topics, zmqutil
from common.rpc import OrchestratorClient
from p4bus.harness.workspaces import (
    SeededWorkspace,
    agent_settings,
    orchestrator_settings,
    p4sim_path,
    seed_workspace,
)

N_JOBS = 100
N_AGENTS = 4
JOB_TIMEOUT_S = 150.0
# States in which a job stops moving by itself.
STOPPED = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED", "WAITING_RESOLVE")
TARGET_STAGE_MS = 5.0
TARGET_RATIO = 10.0


# ---------------------------------------------------------------------------- following jobs
class JobWatcher:
    """Ends of jobs from `job.*` events (publisher timestamps); if the bus is quiet for a
    second, the orchestrator is asked, so a dropped event cannot hang the bench."""

    def __init__(self, stack: B.BusStack, oc: OrchestratorClient) -> None:
        self.oc = oc
        self.sub = zmqutil.sub(
            zmq.Context.instance(), stack.endpoint("broker_xpub"), oc.security, [topics.JOB + ".", topics.CMD + "."]
        )
        self.done_ts: dict[str, float] = {}  # cmd id -> when the agent published CmdDone

    def wait(self, job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> dict[str, float]:
        """job id -> wall-clock time it stopped."""
        pending, ends = set(job_ids), {}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} jobs did not finish within {timeout:g}s")
            if not self.sub.poll(1000):
                for job_id in list(pending):
                    view = self.oc.job(job_id)
                    if view.state in STOPPED:
                        ends[job_id] = view.updated_at
                        pending.discard(job_id)
                continue
            while self.sub.poll(0):
                ev = P.decode_event(self.sub.recv_multipart())
                if isinstance(ev, P.CmdDone):
                    self.done_ts[ev.cmd_id] = ev.ts
                elif isinstance(ev, P.JobChanged) and ev.job_id in pending and ev.state in STOPPED:
                    ends[ev.job_id] = ev.ts
                    pending.discard(ev.job_id)
        return ends

    def close(self) -> None:
        self.sub.close(linger=0)


def submit(oc: OrchestratorClient, ws: SeededWorkspace) -> str:
    return oc.submit(workspace=ws.name, source=ws.facts["source"], target=ws.facts["target"], desc="bench").job_id


def require_done(views: list[P.JobView]) -> None:
    bad = [f"{v.job_id} {v.state} {v.reason}" for v in views if v.state != "DONE"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not reach DONE: {bad[:3]}")


# ---------------------------------------------------------------------------- one job
@dataclass
class Gap:
    """One command of a job and the p4bus time before it, split by who spent it (wall clocks
    of one machine: the agent's ended_at/started_at, CmdDone's publish time, the spool's
    received_at of the next Exec)."""

    stage: str
    p4_ms: float  # inside the p4 command, as the agent timed it
    gap_ms: float  # previous command's end (or the submit) -> this command's start
    finish_ms: float  # agent: previous command's result written + CmdDone published
    route_ms: float  # CmdDone published -> orchestrator persists and dispatches -> master -> agent
    start_ms: float  # agent: spool record + spawn, up to the process start


def gaps(
    view: P.JobView, cmds: list[Command], done_ts: dict[str, float], submitted: float, ended: float
) -> tuple[list[Gap], float]:
    """Per command: its p4 time and the p4bus time before it; plus the time after the last."""
    out, prev_end, prev_done = [], submitted, submitted
    for run, cmd in zip(view.timeline, cmds, strict=False):
        out.append(
            Gap(
                run.stage,
                (run.ended_at - run.started_at) * 1000,
                (run.started_at - prev_end) * 1000,
                (prev_done - prev_end) * 1000,
                (cmd.received_at - prev_done) * 1000,
                (run.started_at - cmd.received_at) * 1000,
            )
        )
        prev_end, prev_done = run.ended_at, done_ts.get(run.cmd_id, run.ended_at)
    return out, (ended - prev_end) * 1000


def lone_job(oc: OrchestratorClient, watcher: JobWatcher, ws: SeededWorkspace) -> tuple[P.JobView, float, float]:
    submitted = time.time()
    job_id = submit(oc, ws)
    ended = watcher.wait([job_id])[job_id]
    view = oc.job(job_id)
    require_done([view])
    return view, submitted, ended


# ---------------------------------------------------------------------------- many jobs
@dataclass
class Throughput:
    jobs: int
    seconds: float
    transitions: int
    orch_cpu_s: float
    orch_peak_rss_mib: float


def many_jobs(oc: OrchestratorClient, watcher: JobWatcher, seeds: list[SeededWorkspace], orch_pid: int) -> Throughput:
    cpu_before = B.proc_usage(orch_pid).cpu_s
    t0 = time.time()
    job_ids = [submit(oc, ws) for ws in seeds]
    ends = watcher.wait(job_ids)
    seconds = max(ends.values()) - t0
    usage = B.proc_usage(orch_pid)
    views = [oc.job(j) for j in job_ids]
    require_done(views)
    # A transition = entering a stage (one timeline command each) or the terminal state.
    transitions = sum(len(v.timeline) + 1 for v in views)
    return Throughput(len(job_ids), seconds, transitions, usage.cpu_s - cpu_before, usage.peak_rss_mib)


# ---------------------------------------------------------------------------- the same commands elsewhere
@dataclass
class Command:
    stage: str
    argv: list[str]
    stdin: bytes | None
    exit_code: int | None
    received_at: float  # when the agent recorded the Exec in its spool


def job_commands(view: P.JobView, spool_root: Path) -> list[Command]:
    """The job's commands: argv from its timeline; stdin (the change spec of `change -i`) is
    not in the timeline, so it comes from the agent's spool record of the same command."""
    out = []
    for run in view.timeline:
        entry = Spool(spool_root / run.agent).read_spec(run.cmd_id)
        if entry is None:
            raise RuntimeError(f"no spool record of {run.cmd_id} on {run.agent}")
        out.append(Command(run.stage, run.argv, entry.spec.stdin, run.exit_code, entry.received_at))
    return out


Runner = Callable[[Command, SeededWorkspace, str], float]  # (command, workspace, PATH) -> seconds


def p4_env(ws: SeededWorkspace, path: str) -> dict[str, str]:
    return {**ws.p4_env(), "PATH": path}


def run_local(cmd: Command, ws: SeededWorkspace, path: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd.argv,
        cwd=ws.root,
        env={**os.environ, **p4_env(ws, path)},
        input=cmd.stdin or b"",
        capture_output=True,
    )
    seconds = time.perf_counter() - t0
    _same_exit(cmd, done, "locally")
    return seconds


def ssh_runner(ssh: SshTarget) -> Runner:
    def run(cmd: Command, ws: SeededWorkspace, path: str) -> float:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in p4_env(ws, path).items())
        remote = f"cd {shlex.quote(ws.root)} && env {env} {shlex.join(cmd.argv)}"
        t0 = time.perf_counter()
        done = subprocess.run(ssh.fresh() + [remote], input=cmd.stdin or b"", capture_output=True)
        seconds = time.perf_counter() - t0
        _same_exit(cmd, done, "over ssh")
        return seconds

    return run


def _same_exit(cmd: Command, done: subprocess.CompletedProcess, where: str) -> None:
    """The replay must do the job's work: same exit code as on the agent."""
    if done.returncode != cmd.exit_code:
        raise RuntimeError(
            f"{cmd.stage} {cmd.argv} exited {done.returncode} {where} "
            f"(the job's exit: {cmd.exit_code}): {done.stderr.decode(errors='replace')[-300:]}"
        )


def replay(cmds: list[Command], ws: SeededWorkspace, path: str, runner: Runner) -> list[float]:
    return [runner(c, ws, path) for c in cmds]


# ---------------------------------------------------------------------------- report
def main() -> None:
    args = B.parser(__doc__).parse_args()
    print(B.machine())
    with B.workdir(args, "jobs") as tmp:
        path = p4sim_path(tmp / "bin")
        names = [f"ws{i:03d}" for i in range(N_JOBS)]
        t0 = time.monotonic()
        seeds = {n: seed_workspace(tmp / "ws" / n, n) for n in ["warm", "lone", "replay-local", "replay-ssh", *names]}
        print(f"seeded {len(seeds)} p4sim servers in {time.monotonic() - t0:.1f}s")
        per_agent = [names[i::N_AGENTS] for i in range(N_AGENTS)]
        per_agent[0] += ["warm", "lone"]
        agents = [
            # One root over every workspace (not one per workspace): the agent checks each
            # command's cwd against its roots, and that check is part of what is measured.
            B.AgentSpec(
                f"agent-{i + 1}",
                ["p4"],
                {**agent_settings(seeds[n] for n in held), "workspace_roots": [str(tmp / "ws")]},
            )
            for i, held in enumerate(per_agent)
        ]
        on_bus = orchestrator_settings(seeds[n] for n in ["warm", "lone", *names])
        with (
            B.BusStack(tmp, agents, on_bus, path=path) as stack,
            OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security(), timeout=30.0) as oc,
        ):
            watcher = JobWatcher(stack, oc)
            try:
                lone_job(oc, watcher, seeds["warm"])
                view, submitted, ended = lone_job(oc, watcher, seeds["lone"])
                tp = many_jobs(oc, watcher, [seeds[n] for n in names], stack.pid("orchestrator"))
            finally:
                watcher.close()
            cmds = job_commands(view, tmp / "state" / "spool")
        rows, tail = gaps(view, cmds, watcher.done_ts, submitted, ended)
        report_lone(view, rows, tail)
        report_throughput(tp)
        local = replay(cmds, seeds["replay-local"], path, run_local)
        with B.ssh_baseline(args) as ssh:
            remote = replay(cmds, seeds["replay-ssh"], path, ssh_runner(ssh)) if ssh else None
        report_replay(rows, submitted, ended, local, remote)


def report_lone(view: P.JobView, rows: list[Gap], tail: float) -> None:
    print(f"\none job alone ({view.job_id}, {len(rows)} commands), times in ms:")
    print(
        B.table(
            [
                "stage",
                "inside p4",
                "p4bus before it",
                "agent: result + CmdDone",
                "orchestrator + master",
                "agent: spool + spawn",
            ],
            [(g.stage, g.p4_ms, g.gap_ms, g.finish_ms, g.route_ms, g.start_ms) for g in rows]
            + [("(to the DONE event)", "", tail, "", "", "")],
        )
    )
    n = len(rows)
    parts = (("agent finish", "finish_ms"), ("orchestrator + master", "route_ms"), ("agent start", "start_ms"))
    print(
        "mean per stage: " + ", ".join(f"{name} {sum(getattr(g, attr) for g in rows) / n:.1f}" for name, attr in parts)
    )


def report_throughput(tp: Throughput) -> None:
    print(f"\n{tp.jobs} jobs across {N_AGENTS} agents:")
    print(
        B.table(
            [
                "jobs",
                "wall s",
                "jobs/min",
                "stage transitions",
                "transitions/s",
                "orchestrator CPU s",
                "orchestrator peak RSS MiB",
            ],
            [
                (
                    tp.jobs,
                    tp.seconds,
                    tp.jobs / tp.seconds * 60,
                    tp.transitions,
                    tp.transitions / tp.seconds,
                    tp.orch_cpu_s,
                    tp.orch_peak_rss_mib,
                )
            ],
        )
    )


def report_replay(
    stages: list[Gap], submitted: float, ended: float, local: list[float], remote: list[float] | None
) -> None:
    n = len(stages)
    wall = (ended - submitted) * 1000
    bus = wall - sum(g.p4_ms for g in stages)
    p4_local = sum(local) * 1000
    rows: list[tuple[str, int, float, float, float, float]] = [
        ("p4bus (one job alone)", n, wall, wall - bus, bus, bus / n)
    ]
    if remote is not None:
        ssh_wall = sum(remote) * 1000
        rows.append(
            ("ssh localhost per command, fresh", n, ssh_wall, p4_local, ssh_wall - p4_local, (ssh_wall - p4_local) / n)
        )
    print("\nthe same job's commands, overhead = wall - time inside p4 (ms):")
    print(B.table(["path", "commands", "wall", "inside p4", "overhead", "overhead per stage"], rows))
    per_stage = bus / n
    print(
        f"target <= {TARGET_STAGE_MS:g} ms p4bus overhead per stage: "
        f"{'met' if per_stage <= TARGET_STAGE_MS else 'NOT met'} ({per_stage:.1f} ms)"
    )
    if remote is not None:
        ratio = (sum(remote) * 1000 - p4_local) / bus
        print(
            f"target >= {TARGET_RATIO:g}x less overhead than ssh per command: "
            f"{'met' if ratio >= TARGET_RATIO else 'NOT met'} ({ratio:.1f}x)"
        )


if __name__ == "__main__":
    main()
