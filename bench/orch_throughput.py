"""Orchestrator throughput: jobs whose commands finish at once, to measure the orchestrator alone.

1. Recording: one real p4-integrate job runs on a real agent against a seeded p4sim depot; every
   command's result (exit code, stdout, stderr, from its CmdDone event) is kept, keyed by its p4
   arguments.
2. Replay: a fresh broker, master and orchestrator with ``--workspaces`` workspaces (the recorded
   one's p4 settings under other names), served by ``--agents`` simulated agents
   (bench/agentsim.py) that answer every Exec at once with the recorded result -- an ExecReply
   whose status is done, plus the CmdDone event a real agent publishes. The orchestrator does
   everything it does for real jobs (store transactions, interpreters, dispatch through the
   master, events); no process runs and no p4 is called.
3. After a warm-up job per workspace, the simulators hold every Exec unanswered while ``--jobs``
   jobs are submitted round robin over the workspaces; then they answer, and the clock runs
   from there to the last job's end. A transition is entering a stage (one timeline command) or
   the final state, as in bench/jobs.py (those made before the clock started are not counted).

Reported: transitions per second sustained, the orchestrator's CPU per transition and its share
of a core, with the store on SQLite (the default) and, with ``--postgres``, on a throwaway
PostgreSQL server of the harness (p4bus/harness/postgres.py; it runs with fsync off, so compare it
with the ``--store-dir /dev/shm`` row, where SQLite's fsync costs nothing either).
Goal (issue 13): >= 1,000 transitions/s.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from bench import common as B
from bench.agentsim import Answer, SimConfig, SimProcess, answer_key, authorize, new_agents, simulators
from bench.jobs import JobWatcher, require_done
from common import protocol as P
from common import topics, zmqutil
from common.rpc import OrchestratorClient
from p4bus.harness.postgres import PgServer
from p4bus.harness.stack import wait_for
from p4bus.harness.workspaces import agent_settings, orchestrator_settings, p4sim_path, seed_workspace

GOAL_PER_S = 1000.0
RECORD_TIMEOUT_S = 60.0
# For a batch of jobs to end (a loaded machine can make 300 jobs take minutes).
WAIT_S = 900.0


# ---------------------------------------------------------------------------- recording
@dataclass
class Recording:
    conf: dict[str, Any]  # the recorded workspace's [orchestrator.workspaces.NAME] table
    facts: dict[str, Any]  # its source and target
    answers: dict[str, Answer]
    stages: list[str]


def record(tmp: Path) -> Recording:
    """One real job on a real agent and p4sim; its commands' results by p4 arguments."""
    path = p4sim_path(tmp / "bin")
    ws = seed_workspace(tmp / "ws" / "rec", "rec")
    agent = B.AgentSpec("rec-agent", ["p4"], {**agent_settings([ws]), "workspace_roots": [str(tmp / "ws")]})
    with (
        B.BusStack(tmp / "record", [agent], orchestrator_settings([ws]), path=path) as stack,
        OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security(), timeout=30.0) as oc,
    ):
        sub = zmqutil.sub(
            zmq.Context.instance(), stack.endpoint("broker_xpub"), stack.security(), [topics.CMD + ".", "beacon."]
        )
        try:
            B.live_subscription(sub)
            job_id = oc.submit(workspace=ws.name, source=ws.facts["source"], target=ws.facts["target"]).job_id
            done: dict[str, P.CmdStatus] = {}
            deadline = time.monotonic() + RECORD_TIMEOUT_S
            while (view := oc.job(job_id)).state not in ("DONE", "FAILED", "CANCELLED"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the recording job {job_id} is still {view.state} after {RECORD_TIMEOUT_S:g}s")
                while sub.poll(100):
                    ev = P.decode_event(sub.recv_multipart())
                    if isinstance(ev, P.CmdDone):
                        done[ev.cmd_id] = ev.status
            while sub.poll(200):  # the last CmdDone may trail the job's end
                ev = P.decode_event(sub.recv_multipart())
                if isinstance(ev, P.CmdDone):
                    done[ev.cmd_id] = ev.status
        finally:
            sub.close(linger=0)
    require_done([view])
    answers: dict[str, Answer] = {}
    for run in view.timeline:
        st = done.get(run.cmd_id)
        if st is None or st.truncated:
            raise RuntimeError(f"no whole result recorded for {run.stage} {run.argv}")
        got = Answer(st.exit_code if st.exit_code is not None else 1, st.stdout, st.stderr)
        key = answer_key(run.argv)
        if answers.get(key, got) != got:
            raise RuntimeError(f"{run.argv} gave two different results in one job: it cannot be replayed by argv")
        answers[key] = got
    return Recording(
        ws.conf, {k: ws.facts[k] for k in ("source", "target")}, answers, [run.stage for run in view.timeline]
    )


# ---------------------------------------------------------------------------- a simulated fleet
@dataclass
class Fleet:
    stack: B.BusStack
    oc: OrchestratorClient
    workspaces: list[str]
    sims: list[SimProcess]


@contextlib.contextmanager
def fleet(
    tmp: Path,
    conf: dict[str, Any],
    n_workspaces: int,
    n_agents: int,
    answers: dict[str, Answer] | None = None,
    hold: bool = False,
    orchestrator: dict[str, Any] | None = None,
    profile: Path | None = None,
) -> Iterator[Fleet]:
    """Broker, master and orchestrator with ``n_workspaces`` copies of the workspace ``conf``
    (other names, same p4 settings), held by ``n_agents`` simulated agents (one process each);
    ``orchestrator``: more [orchestrator] settings (e.g. its store); ``profile``: run the
    orchestrator under cProfile, its stats written there when the fleet stops."""
    names = [f"ws{i:03d}" for i in range(n_workspaces)]
    held = {f"sim-{a + 1}": names[a::n_agents] for a in range(n_agents)}
    tmp.mkdir(parents=True, exist_ok=True)
    bus = B.BusStack(tmp, [], {n: dict(conf) for n in names})
    if orchestrator:
        bus.stack.tree["orchestrator"].update(orchestrator)
    if profile is not None:
        bus.stack.placement["orchestrator"] = profiled(tmp, profile)
    with bus as stack:
        cfg = stack.stack.config()
        agents = new_agents(list(held), held)
        authorize(cfg.keyring_path, agents)
        base = SimConfig(
            master=stack.endpoint("master_agents"),
            broker=stack.endpoint("broker_xsub"),
            keyring=str(cfg.keyring_path),
            agents=agents,
            answers=answers or {},
            hold=hold,
        )
        with (
            simulators(tmp, base, 1) as sims,
            OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security(), timeout=60.0) as oc,
        ):
            yield Fleet(stack, oc, names, sims)
            for s in sims:
                stats = s.stats()
                if stats["misses"] or s.errors:
                    print(f"agentsim {s.pid}: {stats['misses']} Execs without a recorded answer; {s.errors[:3]}")


def profiled(tmp: Path, out: Path) -> tuple[str, ...]:
    """A placement (Stack.placement) that runs a service under cProfile: the wrapper execs the
    service's Python with ``-m cProfile -o OUT`` before its ``-m p4bus ...`` (its pid stays the
    service's); the stats are written when it stops cleanly (SIGTERM)."""
    wrapper = tmp / "cprofile.sh"
    wrapper.write_text(f'#!/bin/sh\npy="$1"; shift\nexec "$py" -m cProfile -o {shlex.quote(str(out))} "$@"\n')
    wrapper.chmod(0o700)
    return (str(wrapper),)


# ---------------------------------------------------------------------------- measuring
@dataclass
class Result:
    store: str
    jobs: int
    workspaces: int
    seconds: float
    transitions: int
    orch_cpu_s: float
    orch_rss_mib: float
    master_cpu_s: float
    sims_cpu_s: float


def submit_all(f: Fleet, facts: dict[str, Any], n: int) -> list[str]:
    return [
        f.oc.submit(
            workspace=f.workspaces[i % len(f.workspaces)], source=facts["source"], target=facts["target"]
        ).job_id
        for i in range(n)
    ]


def measure(f: Fleet, facts: dict[str, Any], n_jobs: int, store: str) -> Result:
    watcher = JobWatcher(f.stack, f.oc)
    try:
        wait_for(lambda: len(f.oc.jobs()) == 0, 10.0, "an idle orchestrator", 0.2)
        warm = submit_all(f, facts, len(f.workspaces))
        watcher.wait(warm, WAIT_S)
        # The queue is filled behind a closed gate, then drained: the submits (one request
        # each, as `p4bus submit` makes them) are not what is timed.
        for sim in f.sims:
            sim.gate()
        job_ids = submit_all(f, facts, n_jobs)
        pids = [f.stack.pid("orchestrator"), f.stack.pid("master"), *(s.pid for s in f.sims)]
        before = [B.proc_usage(p).cpu_s for p in pids]
        t0 = time.time()
        for sim in f.sims:
            sim.go()
        ends = watcher.wait(job_ids, WAIT_S)
        seconds = max(ends.values()) - t0
        after = [B.proc_usage(p).cpu_s for p in pids]
    finally:
        watcher.close()
    views = [f.oc.job(j) for j in job_ids]
    require_done(views)
    cpu = [a - b for a, b in zip(after, before, strict=True)]
    return Result(
        store,
        n_jobs,
        len(f.workspaces),
        seconds,
        # Less the transitions made before the gate opened: each workspace's first job entering
        # its first stage (counted as made before even if one came after: the rate errs low).
        sum(len(v.timeline) + 1 for v in views) - min(n_jobs, len(f.workspaces)),
        cpu[0],
        B.proc_usage(pids[0]).peak_rss_mib,
        cpu[1],
        sum(cpu[2:]),
    )


def report(results: list[Result]) -> None:
    print(
        B.table(
            [
                "store",
                "jobs",
                "workspaces",
                "wall s",
                "transitions",
                "transitions/s",
                "orchestrator CPU ms per transition",
                "orchestrator CPU % of a core",
                "orchestrator peak RSS MiB",
                "master CPU %",
                "simulators CPU %",
            ],
            [
                (
                    r.store,
                    r.jobs,
                    r.workspaces,
                    r.seconds,
                    r.transitions,
                    r.transitions / r.seconds,
                    1000 * r.orch_cpu_s / r.transitions,
                    100 * r.orch_cpu_s / r.seconds,
                    r.orch_rss_mib,
                    100 * r.master_cpu_s / r.seconds,
                    100 * r.sims_cpu_s / r.seconds,
                )
                for r in results
            ],
        )
    )
    for r in results:
        rate = r.transitions / r.seconds
        print(
            f"goal >= {GOAL_PER_S:g} transitions/s ({r.store}): {'met' if rate >= GOAL_PER_S else 'NOT met'} ({rate:.0f}/s)"
        )


def main() -> None:
    p = B.parser(__doc__)
    p.add_argument("--jobs", type=int, default=300, help="jobs measured (default 300)")
    p.add_argument("--workspaces", type=int, default=100, help="workspaces the jobs spread over (default 100)")
    p.add_argument("--agents", type=int, default=4, help="simulated agents holding them (default 4)")
    p.add_argument(
        "--postgres",
        action="store_true",
        help="also measure with the store on a throwaway PostgreSQL server (p4bus/harness/postgres.py: "
        "the distribution's server, fsync off)",
    )
    p.add_argument(
        "--store-dir",
        type=Path,
        help="also measure with the SQLite file in this directory, e.g. /dev/shm (tmpfs: fsync costs "
        "nothing, so the row shows what the orchestrator does when the disk is not what it waits for)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="run the orchestrator of the last store measured under cProfile and write its stats to this "
        "file (read them with `python -m pstats FILE`)",
    )
    args = p.parse_args()
    print(B.machine())
    results = []
    with B.workdir(args, "orch") as tmp, contextlib.ExitStack() as cleanup:
        stores: list[tuple[str, dict[str, Any]]] = [("SQLite", {})]
        if args.store_dir:
            where = Path(tempfile.mkdtemp(prefix="p4bus-bench-orch-", dir=args.store_dir))
            cleanup.callback(shutil.rmtree, where, True)
            stores.append((f"SQLite in {args.store_dir}", {"store": str(where / "jobs.db")}))
        if args.postgres:
            pg = cleanup.enter_context(PgServer())
            stores.append(("PostgreSQL (fsync off)", {"store": pg.create_database("bench")}))
        rec = record(tmp / "rec")
        print(f"recorded one job: {len(rec.stages)} commands ({', '.join(rec.stages)})")
        for i, (store, settings) in enumerate(stores):
            profile = args.profile.resolve() if args.profile and i == len(stores) - 1 else None
            with fleet(
                tmp / store, rec.conf, args.workspaces, args.agents, rec.answers, orchestrator=settings, profile=profile
            ) as f:
                results.append(measure(f, rec.facts, args.jobs, store))
            report(results[-1:])  # now: a later row may fail
    report(results)


if __name__ == "__main__":
    main()
