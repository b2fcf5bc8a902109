"""Chaos soak: integration jobs run while the services are SIGKILLed and restarted, agents freeze,
their links are cut and a slow subscriber reads the whole event stream.

    python -m bench.chaos --duration 600          # as root: agents on hosts of their own (netns)
    python -m bench.chaos --duration 60 --no-netns

Every job gets a freshly seeded p4sim workspace of its own, so every p4 command a job's timeline
records as done must have run exactly once; a counting `p4` wrapper logs every execution. At the
end (faults healed, services running, every job ended) it prints jobs DONE, jobs FAILED with their
reasons, p4 commands run more than once (must be 0) and output bytes lost (`p4bus tail` of every
DONE job against the agent's spool, must be 0), and the slow subscriber's count. The faults, one
at a time per target, every `--every` seconds on average:

- kill: SIGKILL broker, master, orchestrator or an agent; started again after 0-3 s (an agent after
  0-`--agent-down` s);
- freeze: SIGSTOP an agent's process group for 5-20 s, then SIGCONT;
- cut: take an agent host's link down for 5-20 s (only with network namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench import common as B
from common import protocol as P
from p4bus.harness import netns
from p4bus.harness.stack import Stack, wait_for
from p4bus.harness.workspaces import (
    SeededWorkspace,
    agent_settings,
    counting_p4,
    orchestrator_settings,
    seed_workspace,
)

REPO = Path(__file__).resolve().parent.parent
CORE = ("broker", "master", "orchestrator")
TERMINAL = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED")
FREEZE_S = (5.0, 20.0)
CORE_DOWN_S = 3.0
DRAIN_S = 600.0  # after the faults stop: every job must end within this
SLOW_READ_S = 0.001  # the slow subscriber's time per event


@dataclass
class Fault:
    kind: str
    target: str
    at: float
    until: float


@dataclass
class Soak:
    args: argparse.Namespace
    tmp: Path
    net: netns.Network | None
    stack: Stack = field(init=False)
    workspaces: list[SeededWorkspace] = field(default_factory=list)
    agents: dict[str, list[SeededWorkspace]] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> workspace
    faults: list[Fault] = field(default_factory=list)
    busy: dict[str, float] = field(default_factory=dict)  # target -> until when a fault holds it
    exec_log: Path = field(init=False)
    t0: float = 0.0

    def __post_init__(self) -> None:
        self.exec_log = self.tmp / "p4-executions.log"
        path = counting_p4(self.tmp / "bin", self.exec_log)
        tree: dict[str, Any] = {
            "state_dir": str(self.tmp / "state"),
            "port_base": 30000 if self.net else B.zmqutil.free_port_base(6),
            "log_level": "warning",
            "master": {"heartbeat_s": 0.5},
            "agent": {"heartbeat_s": 0.5, "allowed_executables": ["p4"]},
            "orchestrator": {"workspaces": {}},
        }
        if self.net:
            tree["host"] = self.net["bus"].address
        self.stack = Stack(tree, self.tmp, log_dir=self.tmp / "logs", env={"PATH": path}, cwd=REPO)
        if self.net:
            self.stack.placement.update({svc: self.net["bus"].prefix() for svc in CORE})

    # ------------------------------------------------------------------ set-up
    def seed(self, n_workspaces: int, n_agents: int) -> None:
        t0 = time.monotonic()
        self.workspaces = [
            seed_workspace(self.tmp / "ws" / f"ws{i:03}", f"ws{i:03}", "clean") for i in range(n_workspaces)
        ]
        self.stack.tree["orchestrator"]["workspaces"] = orchestrator_settings(self.workspaces)
        self.agents = {f"agent-{a}": self.workspaces[a::n_agents] for a in range(n_agents)}
        print(f"seeded {n_workspaces} workspaces in {time.monotonic() - t0:.1f}s")

    def start(self) -> None:
        for svc in CORE:
            self.stack.start(svc)
        for agent_id, held in self.agents.items():
            if self.net:
                self.stack.placement[agent_id] = self.net[agent_id].prefix()
            settings = {"id": agent_id, **agent_settings(held), "spool_dir": str(self.tmp / "spool" / agent_id)}
            self.stack.start("agent", name=agent_id, extra={"agent": settings})
        wait_for(lambda: self.listed_agents() >= len(self.agents), 60, "every agent listed", 0.5)

    # ------------------------------------------------------------------ the CLI, as an operator on the bus host
    def cli_argv(self, *argv: str) -> list[str]:
        cmd = [sys.executable, "-m", "p4bus", "--config", str(self.stack.config_file()), *argv]
        return [*self.net["bus"].prefix(), *cmd] if self.net else cmd

    def cli(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cli_argv(*argv), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )

    def listed_agents(self) -> int:
        done = self.cli("agents", "--json", timeout=30)
        return (
            sum(1 for line in done.stdout.splitlines() if json.loads(line).get("alive", True))
            if done.returncode == 0
            else 0
        )

    def views(self) -> dict[str, P.JobView] | None:
        done = self.cli("status", "--all", "--json", timeout=30)
        if done.returncode != 0:
            return None  # the orchestrator is down right now
        return {v.job_id: v for v in msgspec.json.decode(done.stdout, type=list[P.JobView])}

    def view(self, job_id: str) -> P.JobView:
        done = self.cli("status", job_id, "--json")
        return msgspec.json.decode(done.stdout, type=P.JobView)

    def submit(self, ws: SeededWorkspace) -> str | None:
        f = ws.facts
        done = self.cli("submit", "--workspace", ws.name, "--source", f["source"], "--target", f["target"])
        if done.returncode != 0:
            return None  # orchestrator down: the driver tries the workspace again later
        job_id = done.stdout.split()[0]
        self.jobs[job_id] = ws.name
        return job_id

    # ------------------------------------------------------------------ faults
    def targets(self) -> list[tuple[str, str]]:
        kinds = [("kill", s) for s in CORE] + [("kill", a) for a in self.agents]
        kinds += [("freeze", a) for a in self.agents]
        if self.net:
            kinds += [("cut", a) for a in self.agents]
        return kinds

    def inject(self, rng: random.Random, now: float) -> None:
        free = [(k, t) for k, t in self.targets() if self.busy.get(t, 0.0) <= now]
        if not free:
            return
        kind, target = rng.choice(free)
        if kind == "kill":
            down = rng.uniform(0, self.args.agent_down if target in self.agents else CORE_DOWN_S)
            self.stack.kill(target)
        elif kind == "freeze":
            down = rng.uniform(*FREEZE_S)
            self.stack.proc(target).signal_group(signal.SIGSTOP)
        else:
            down = rng.uniform(*FREEZE_S)
            assert self.net is not None
            self.net.cut(target)
        fault = Fault(kind, target, now, now + down)
        self.faults.append(fault)
        self.busy[target] = fault.until
        print(f"  {now - self.t0:6.1f}s {kind:6} {target} for {down:.1f}s")

    def heal(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.stack.restart(fault.target)
        elif fault.kind == "freeze":
            self.stack.proc(fault.target).signal_group(signal.SIGCONT)
        else:
            assert self.net is not None
            self.net.heal(fault.target)

    # ------------------------------------------------------------------ the run
    def run(self, rng: random.Random, reader: SlowReader) -> None:
        self.t0 = time.monotonic()
        end = self.t0 + self.args.duration
        unused = list(self.workspaces)
        healing: list[tuple[float, int]] = []  # (until, index in faults)
        next_fault = self.t0 + rng.expovariate(1 / self.args.every)
        while time.monotonic() < end and unused:
            now = time.monotonic()
            while healing and healing[0][0] <= now:
                self.heal(self.faults[heapq.heappop(healing)[1]])
            if now >= next_fault:
                before = len(self.faults)
                self.inject(rng, now)
                if len(self.faults) > before:
                    heapq.heappush(healing, (self.faults[-1].until, len(self.faults) - 1))
                next_fault = now + rng.expovariate(1 / self.args.every)
            views = self.views()
            active = sum(1 for v in (views or {}).values() if v.state not in TERMINAL)
            if views is not None and active < self.args.concurrency and self.submit(unused[0]):
                unused.pop(0)
            time.sleep(0.5)
        for _, i in sorted(healing):
            self.heal(self.faults[i])
        print(f"faults stopped after {time.monotonic() - self.t0:.0f}s; {len(self.jobs)} jobs submitted")
        wait_for(self.all_ended, DRAIN_S, "every job to end after the faults", 2.0)
        reader.stop()

    def all_ended(self) -> bool:
        views = self.views()
        return views is not None and all(views[j].state in TERMINAL for j in self.jobs if j in views)

    # ------------------------------------------------------------------ the verdict
    def executions(self, ws: str) -> Counter[str]:
        port = next(w.facts["P4PORT"] for w in self.workspaces if w.name == ws)
        lines = self.exec_log.read_text().splitlines() if self.exec_log.exists() else []
        return Counter(line[len(port) + 1 :] for line in lines if line.startswith(port + " "))

    def ran_twice(self, view: P.JobView) -> list[str]:
        """p4 commands of this job (its workspace's only job) that ran more often than its
        timeline has them done: a command whose result was lost counts as once."""
        done = Counter(" ".join(r.argv[1:]) for r in view.timeline if r.state == "DONE")
        ran = self.executions(view.workspace)
        return [f"{argv} ×{n}" for argv, n in ran.items() if n > max(done[argv], 1)]

    def bytes_lost(self, view: P.JobView) -> int:
        """Bytes in the agent's spool that `p4bus tail` did not print, or printed differently."""
        tail = self.cli("tail", view.job_id, timeout=120)
        bodies = [body for header, body in sections(tail.stdout) if not header.startswith(view.job_id)]
        lost = 0
        for i, run in enumerate(view.timeline):
            body = bodies[i] if i < len(bodies) else []
            printed = {
                "stdout": "".join(line for line in body if not line.startswith("stderr| ")),
                "stderr": "".join(line[len("stderr| ") :] for line in body if line.startswith("stderr| ")),
            }
            for stream, text in printed.items():
                path = self.tmp / "spool" / run.agent / run.cmd_id / stream
                spooled = path.read_text() if path.exists() else ""
                if text != spooled:
                    lost += max(len(spooled.encode()) - common_prefix(text, spooled), 1)
        return lost

    def report(self, reader: SlowReader) -> int:
        views = {j: self.view(j) for j in self.jobs}
        states = Counter(v.state for v in views.values())
        twice = {j: t for j, v in views.items() if (t := self.ran_twice(v))}
        lost = {j: n for j, v in views.items() if v.state == "DONE" and (n := self.bytes_lost(v))}
        print()
        print(f"faults: {dict(Counter(f.kind for f in self.faults))} over {self.args.duration:g}s")
        print(f"jobs: {len(views)}  " + "  ".join(f"{s} {n}" for s, n in sorted(states.items())))
        for j, v in views.items():
            if v.state != "DONE":
                print(f"  {j} {v.state} at {v.stage}: {v.reason}")
        print(f"p4 commands run more than once: {sum(len(t) for t in twice.values())}")
        for j, t in twice.items():
            print(f"  {j}: {', '.join(t)}")
        print(f"output bytes lost: {sum(lost.values())} (in {len(lost)} jobs)")
        print(f"slow subscriber: {reader.lines} events read, exit {reader.code}, stderr: {reader.err.strip()[:300]!r}")
        return 0 if not twice and not lost and states.get("FAILED", 0) == 0 else 1


class SlowReader:
    """`p4bus events` read at SLOW_READ_S per event: the slow subscriber of the soak."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines = 0
        self.err = ""
        self.code: int | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            self.lines += 1
            time.sleep(SLOW_READ_S)

    def stop(self) -> None:
        self.code = self.proc.poll()  # None: still running, as it should be
        self.proc.terminate()
        _, self.err = self.proc.communicate(timeout=30)


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(header, body lines) per `── header` line of `p4bus tail`, up to the closing summary."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("── "):
            out.append((line[3:].rstrip("\n"), []))
        elif out and not line.startswith("INT-"):
            out[-1][1].append(line)
        elif out:
            break
    return out


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.encode(), b.encode(), strict=False):
        if x != y:
            break
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of faults (default 600)")
    ap.add_argument("--every", type=float, default=6.0, help="mean seconds between faults (default 6)")
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--workspaces", type=int, default=0, help="one per job (default: enough for the duration)")
    ap.add_argument("--concurrency", type=int, default=6, help="jobs active at once (default 6)")
    ap.add_argument("--agent-down", type=float, default=20.0, help="longest an agent stays killed (default 20 s)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-netns", action="store_true", help="no network namespaces: no link cuts")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, spools, depots)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    why = "--no-netns" if args.no_netns else netns.unavailable()
    print(f"chaos soak: seed {seed}, {args.duration:g}s; link cuts {'off: ' + why if why else 'on'}")
    n_ws = args.workspaces or max(args.concurrency * 4, int(args.duration))
    with B.workdir(args, "chaos") as tmp, contextlib.ExitStack() as cleanup:
        net = (
            None if why else cleanup.enter_context(netns.Network(["bus", *(f"agent-{a}" for a in range(args.agents))]))
        )
        soak = Soak(args, tmp, net)
        cleanup.callback(soak.stack.stop, grace=0)  # before the namespaces go
        soak.seed(n_ws, args.agents)
        soak.start()
        reader = SlowReader(soak.cli_argv("events"))
        soak.run(rng, reader)
        return soak.report(reader)


if __name__ == "__main__":
    sys.exit(main())
