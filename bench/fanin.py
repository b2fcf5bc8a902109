"""Fan-in: hundreds of agents heartbeating to one master -- its CPU, and how soon it reports a lost one.

For each agent count (default 100, 500, 1000) a fresh broker and master start; the agents are
simulated (bench/agentsim.py: ``--per-process`` agents per process, each its own DEALER and CURVE
key in the keyring as role agent, Hello then a Heartbeat every second, spread over the second).
Once the master lists them all and ``--settle`` seconds have passed:

1. the master's CPU (utime + stime from /proc) over a ``--window`` second steady window, as % of
   one core, and its peak RSS;
2. ``--kills`` single agents, in different processes, have their sockets closed abruptly (no
   Bye), a few tenths of a second apart: seconds from each close to its AgentLost event on the
   bus (received by a subscriber of the broker);
3. one simulator process is SIGKILLed: seconds until AgentLost for each of its agents.

Goals (issue 13): master CPU <= 10 % of one core at 1,000 agents; lost reported <= 3 s.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from bench import common as B
from bench.agentsim import SimConfig, SimProcess, authorize, new_agents, simulators
from common import protocol as P
from common import topics, zmqutil
from common.rpc import MasterClient
from p4bus.harness.stack import wait_for

GOAL_CPU_PCT = 10.0
GOAL_LOST_S = 3.0
KILL_SPACING_S = 0.3
LOST_TIMEOUT_S = 30.0


@dataclass
class Row:
    agents: int
    processes: int
    join_s: float  # simulators started -> every agent welcomed
    master_cpu_pct: float
    master_rss_mib: float
    sims_cpu_pct: float
    single_lost: list[float]  # seconds, close -> AgentLost
    process_lost: list[float]  # seconds, SIGKILL -> AgentLost, one per agent of the process
    process_agents: int


def wait_lost(sub: zmq.Socket, want: set[str], timeout: float) -> dict[str, float]:
    """agent id -> wall-clock time its AgentLost arrived, for every id in ``want`` (or raise)."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while want - got.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no AgentLost within {timeout:g}s for {sorted(want - got.keys())[:5]}")
        if not sub.poll(int(left * 1000) + 1):
            continue
        ev = P.decode_event(sub.recv_multipart())
        if isinstance(ev, P.AgentLost) and ev.agent_id in want:
            got.setdefault(ev.agent_id, time.time())
    return got


def cpu_pct(pids: list[int], window_s: float) -> tuple[float, ...]:
    """Each process's CPU over the next ``window_s`` seconds, as % of one core."""
    before = [B.proc_usage(p).cpu_s for p in pids]
    t0 = time.monotonic()
    time.sleep(window_s)  # the measurement window itself, not a wait for anything
    elapsed = time.monotonic() - t0
    return tuple(100 * (B.proc_usage(p).cpu_s - b) / elapsed for p, b in zip(pids, before, strict=True))


def run(tmp_root: Path, n: int, per_process: int, settle_s: float, window_s: float, kills: int) -> Row:
    tmp = tmp_root / f"agents-{n}"
    tmp.mkdir(parents=True)
    with B.BusStack(tmp, []) as bus:
        cfg = bus.stack.config()
        agents = new_agents([f"sim-{i:04d}" for i in range(n)])
        authorize(cfg.keyring_path, agents)
        sub = zmqutil.sub(
            zmq.Context.instance(), bus.endpoint("broker_xpub"), bus.security(), [topics.AGENT + ".", "beacon."]
        )
        base = SimConfig(
            master=bus.endpoint("master_agents"),
            broker=bus.endpoint("broker_xsub"),
            keyring=str(cfg.keyring_path),
            agents=agents,
        )
        t0 = time.monotonic()
        try:
            with (
                simulators(tmp, base, per_process) as sims,
                MasterClient([bus.endpoint("master_clients")], bus.security()) as mc,
            ):
                join_s = time.monotonic() - t0
                wait_for(lambda: len(mc.agents()) >= n, 60.0, f"the master to list {n} agents", 0.5)
                B.live_subscription(sub)
                time.sleep(settle_s)  # steady state: every agent past its first heartbeats
                master_pid = bus.pid("master")
                master_cpu, *sim_cpu = cpu_pct([master_pid, *(s.pid for s in sims)], window_s)
                rss = B.proc_usage(master_pid).peak_rss_mib
                owned = agents_of(sims, base)
                single = kill_singles(sims, owned, sub, kills)
                victim = sims[-1]
                victims = set(owned[victim.pid])  # less those closed one by one
                killed_at = victim.sigkill()
                seen = wait_lost(sub, victims, LOST_TIMEOUT_S)
                for s in sims:
                    if s.errors:
                        print(f"agentsim {s.pid} reported: {s.errors[:3]}")
        finally:
            sub.close(linger=0)
    return Row(
        n,
        len(sims),
        join_s,
        master_cpu,
        rss,
        sum(sim_cpu),
        single,
        sorted(t - killed_at for t in seen.values()),
        len(victims),
    )


def agents_of(sims: list[SimProcess], base: SimConfig) -> dict[int, list[str]]:
    """simulator pid -> its agents' ids (processes hold consecutive slices, in start order)."""
    per = -(-len(base.agents) // len(sims))
    return {s.pid: [a.id for a in base.agents[i * per : (i + 1) * per]] for i, s in enumerate(sims)}


def kill_singles(sims: list[SimProcess], owned: dict[int, list[str]], sub: zmq.Socket, kills: int) -> list[float]:
    """Close ``kills`` agents (round robin over the processes, never the last one, which is
    SIGKILLed whole afterwards, unless it is the only one); seconds to each AgentLost."""
    pool = sims[:-1] or sims
    closed: dict[str, float] = {}
    for i in range(kills):
        s = pool[i % len(pool)]
        agent_id = owned[s.pid][i // len(pool)]
        owned[s.pid].remove(agent_id)
        closed[agent_id] = s.kill_agent(agent_id)
        time.sleep(KILL_SPACING_S)  # spread the kills over the heartbeat interval
    seen = wait_lost(sub, set(closed), LOST_TIMEOUT_S)
    return sorted(seen[a] - closed[a] for a in closed)


def main() -> None:
    p = B.parser(__doc__)
    p.add_argument("--agents", default="100,500,1000", help="agent counts, comma-separated (default 100,500,1000)")
    p.add_argument("--per-process", type=int, default=250, help="simulated agents per process (default 250)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after all joined before measuring")
    p.add_argument("--window", type=float, default=10.0, help="seconds of the CPU window (default 10)")
    p.add_argument("--kills", type=int, default=6, help="single agents killed per count (default 6)")
    args = p.parse_args()
    print(B.machine())
    rows = []
    with B.workdir(args, "fanin") as tmp:
        for n in (int(x) for x in args.agents.split(",")):
            rows.append(run(tmp, n, args.per_process, args.settle, args.window, args.kills))
            print(f"{n} agents done (load average {os.getloadavg()[0]:.2f})", flush=True)
    print(
        B.table(
            [
                "agents",
                "sim procs",
                "all welcomed s",
                "master CPU % of a core",
                "master peak RSS MiB",
                "simulators CPU %",
                "one agent closed -> lost s p50 / max (N)",
                "process SIGKILLed -> lost s first / last (agents)",
            ],
            [
                (
                    r.agents,
                    r.processes,
                    r.join_s,
                    r.master_cpu_pct,
                    r.master_rss_mib,
                    r.sims_cpu_pct,
                    f"{statistics.median(r.single_lost):.2f} / {max(r.single_lost):.2f} ({len(r.single_lost)})",
                    f"{r.process_lost[0]:.2f} / {r.process_lost[-1]:.2f} ({r.process_agents})",
                )
                for r in rows
            ],
        )
    )
    top = rows[-1]
    worst = max(max(r.single_lost + r.process_lost) for r in rows)
    print(
        f"goal master CPU <= {GOAL_CPU_PCT:g} % at {top.agents} agents: "
        f"{'met' if top.master_cpu_pct <= GOAL_CPU_PCT else 'NOT met'} ({top.master_cpu_pct:.1f} %)"
    )
    print(
        f"goal lost reported <= {GOAL_LOST_S:g} s: {'met' if worst <= GOAL_LOST_S else 'NOT met'} (worst {worst:.2f} s)"
    )


if __name__ == "__main__":
    main()
