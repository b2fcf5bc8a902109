"""What every bench shares: a p4bus stack in a temp dir, the ssh baseline, stats and tables.

Numbers are printed as a markdown table so they can be pasted into docs/performance.md as is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from bench.sshd import Sshd, SshTarget, SshUnavailable
from common import protocol as P
from common import zmqutil
from common.auth import Security
from p4bus.harness.stack import Stack

START_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------- statistics
@dataclass
class Latency:
    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def latency(samples_s: Sequence[float]) -> Latency:
    ordered = sorted(samples_s)

    # Nearest-rank percentile: with N=30 the p99 is the slowest sample, as it should be.
    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))] * 1000

    return Latency(len(ordered), pct(50), pct(99), statistics.fmean(ordered) * 1000)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the machine
def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem_kib / 2**20:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, pyzmq {zmq.pyzmq_version()} / libzmq {zmq.zmq_version()}; "
        f"load average {os.getloadavg()[0]:.2f} at start (other work on the machine skews every row)"
    )


@dataclass
class ProcUsage:
    cpu_s: float  # user + system, this process only
    peak_rss_mib: float  # VmHWM


def proc_usage(pid: int) -> ProcUsage:
    # /proc/<pid>/stat: fields 14 and 15 (utime, stime) in clock ticks; the command name in
    # parentheses may contain spaces, so split after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return ProcUsage(cpu, hwm_kib / 1024)


# ---------------------------------------------------------------------------- arguments
def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    p.add_argument(
        "--install-ssh",
        action="store_true",
        help="apt-get install openssh-server if sshd is missing (for the ssh baseline rows)",
    )
    p.add_argument("--no-ssh", action="store_true", help="skip the ssh baseline rows")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (service logs, spools)")
    p.add_argument(
        "--curve",
        choices=["on", "off", "both"],
        default="both",
        help="p4bus rows with CurveZMQ on (the default of every stack), off (insecure), or both "
        "side by side, interleaved (default: both)",
    )
    return p


def curve_modes(args: argparse.Namespace) -> list[bool]:
    """The CURVE settings --curve asks for, as BusStack's ``curve`` values."""
    return {"on": [True], "off": [False], "both": [True, False]}[args.curve]


def curve_label(curve: bool) -> str:
    return "CURVE on" if curve else "CURVE off"


@contextlib.contextmanager
def ssh_baseline(args: argparse.Namespace) -> Iterator[SshTarget | None]:
    """The throwaway sshd, or None with the reason printed (the ssh rows are then missing)."""
    if args.no_ssh:
        print("ssh rows skipped (--no-ssh)")
        yield None
        return
    try:
        with Sshd(install=args.install_ssh) as target:
            yield target
    except SshUnavailable as exc:
        print(f"ssh rows missing: {exc}")
        yield None


@contextlib.contextmanager
def workdir(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f"p4bus-bench-{prefix}-"))
    try:
        yield tmp
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- the p4bus stack
@dataclass
class AgentSpec:
    id: str
    allowed: list[str]  # allowed_executables
    settings: dict[str, Any]  # the rest of its [agent] table: workspaces, workspace_roots, exec_via, ...


class BusStack:
    """broker + master (+ orchestrator) + agents as child processes on free loopback ports."""

    def __init__(
        self,
        tmp: Path,
        agents: list[AgentSpec],
        orchestrator: dict[str, Any] | None = None,
        path: str | None = None,
        curve: bool = True,
        brokers: int = 1,
    ) -> None:
        self.tmp = tmp
        self.agents = agents
        tree: dict[str, Any] = {
            "state_dir": str(tmp / "state"),
            "port_base": zmqutil.free_port_base(6),
            "log_level": "warning",
            "insecure": not curve,
        }
        if orchestrator is not None:
            tree["orchestrator"] = {"workspaces": orchestrator}
        self.core = ("broker", "master") + (("orchestrator",) if orchestrator is not None else ())
        self.stack = Stack(tree, tmp, log_dir=tmp / "logs", env={"PATH": path} if path else None)
        # Replicated brokers as `p4bus up --brokers N` starts them: the tree lists them all (so every
        # service publishes to each), each started under its own name with its own journal.
        self.brokers = self.stack.replicate_brokers(brokers) if brokers > 1 else {"broker": {}}

    def endpoint(self, name: str) -> str:
        return self.stack.endpoint(name)

    def security(self, name: str = "operator") -> Security | None:
        return self.stack.security(name)

    def pid(self, service: str) -> int:
        return self.stack.proc(service).pid

    def agent_pid(self, index: int) -> int:
        return self.stack.proc(self.agents[index].id).pid

    def __enter__(self) -> BusStack:
        try:
            for service in self.core:
                if service == "broker":
                    for name, extra in self.brokers.items():
                        self.stack.start(service, name=name, extra=extra)
                else:
                    self.stack.start(service)
            for a in self.agents:
                settings = {"id": a.id, "allowed_executables": a.allowed, **a.settings}
                self.stack.start("agent", name=a.id, extra={"agent": settings})
            self.stack.wait_ready(ids=[a.id for a in self.agents], timeout=START_TIMEOUT_S)
        except BaseException:
            self.stack.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()


def single_agent(tmp: Path, allowed: list[str], curve: bool = True) -> BusStack:
    """The stack for the transport benches: one agent whose only root is ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    return BusStack(tmp, [AgentSpec("bench-agent", allowed, {"workspace_roots": [str(tmp)]})], curve=curve)


def live_subscription(sub: zmq.Socket, timeout: float = 15.0) -> None:
    """Until ``sub`` (subscribed to ``beacon.`` among others) carries a beacon: from then on the
    broker forwards its topics, so nothing published after this return is missed for want of a
    subscription still on its way (every service beacons every few seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(200) and isinstance(P.decode_event(sub.recv_multipart()), P.Beacon):
            return
    raise RuntimeError(f"the subscription to the broker carried no beacon in {timeout:g}s")


def null_sink(_stream: int, _data: bytes) -> None:
    """run_command's sink when only the round trip matters."""


def ok(status: P.CmdStatus, what: str) -> None:
    if status.exit_code != 0 or status.error:
        raise RuntimeError(f"{what} failed: exit {status.exit_code} error {status.error!r}")
