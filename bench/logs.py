"""1,000,000 lines of 100 bytes from a command to a subscriber: p4bus beside ssh and a raw pipe.

The producer is `cat` of a file generated once, so it is never the bottleneck. Every path
feeds the same sink, which only keeps the chunks; after the clock stops the bytes are joined,
compared with the file (byte-identical) and their lines counted. Clock: from just before the
command is started (Exec sent / process spawned) to the last byte and the end of the command.
``--curve both`` (the default) runs a stack with CurveZMQ and one without, their runs interleaved.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import common as B
from common import protocol as P
from common.rpc import MasterClient
from p4bus.runner import run_command

LINES = 1_000_000
LINE_BYTES = 100
RUNS = 3
READ_BYTES = 1 << 20
TARGET_LINES_S = 3_000_000


def bus_row(curve: bool) -> str:
    return f"p4bus run_command (agent cat -> broker -> client), {B.curve_label(curve)}"


def write_lines(path: Path) -> bytes:
    """LINES lines of LINE_BYTES bytes each (99 characters + newline); returns the content."""
    pad = "x" * (LINE_BYTES - 11)  # 9 digits + a space + pad + newline
    content = "".join(f"{i:09d} {pad}\n" for i in range(LINES)).encode()
    path.write_bytes(content)
    return content


@dataclass
class Collector:
    """The sink: keeps chunks only, so the clock measures transport, not checking."""

    chunks: list[bytes] = field(default_factory=list)
    stderr: int = 0

    def __call__(self, stream: int, data: bytes) -> None:
        if stream == P.STDOUT:
            self.chunks.append(data)
        else:
            self.stderr += len(data)


@dataclass
class Run:
    seconds: float
    lines: int
    lost_lines: int
    identical: bool
    fetched_bytes: int = 0  # p4bus only: bytes that came from the spool, not the live stream
    cpu_s: dict[str, float] = field(default_factory=dict)  # p4bus only: CPU seconds per process

    @property
    def lines_s(self) -> float:
        return self.lines / self.seconds


def check(expected: bytes, sink: Collector, seconds: float, fetched: int = 0) -> Run:
    got = b"".join(sink.chunks)
    lines = got.count(b"\n")
    return Run(seconds, lines, LINES - lines, got == expected and not sink.stderr, fetched)


def via_bus(mc: MasterClient, stack: B.BusStack, path: Path, expected: bytes) -> Run:
    """One run, plus the CPU each p4bus process spent on it: on 2 cores that says who limits."""
    pids = {"agent": stack.agent_pid(0), "broker": stack.pid("broker")}
    before = {name: B.proc_usage(pid).cpu_s for name, pid in pids.items()}
    client_before = time.process_time()
    sink = Collector()
    t0 = time.perf_counter()
    result = run_command(mc, stack.endpoint("broker_xpub"), P.CmdSpec(argv=["cat", str(path)]), sink)
    seconds = time.perf_counter() - t0
    cpu = {name: B.proc_usage(pid).cpu_s - before[name] for name, pid in pids.items()}
    cpu["client"] = time.process_time() - client_before
    B.ok(result.status, "cat over p4bus")
    run = check(expected, sink, seconds, result.fetched_bytes)
    run.cpu_s = cpu
    return run


def via_pipe(argv: list[str], expected: bytes) -> Run:
    """A child's stdout read in blocks by Python: the raw pipe, or ssh when argv starts with ssh."""
    sink = Collector()
    t0 = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0) as proc:
        assert proc.stdout is not None
        while data := proc.stdout.read(READ_BYTES):
            sink(P.STDOUT, data)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}")
    return check(expected, sink, seconds)


def repeat(fn: Callable[[], Run]) -> list[Run]:
    return [fn() for _ in range(RUNS)]


def main() -> None:
    args = B.parser(__doc__).parse_args()
    print(B.machine())
    results: dict[str, list[Run]] = {}
    with B.workdir(args, "logs") as tmp:
        path = tmp / "lines.txt"
        expected = write_lines(path)
        with contextlib.ExitStack() as up:
            modes = B.curve_modes(args)
            stacks = [up.enter_context(B.single_agent(tmp / f"curve-{c}", ["cat"], curve=c)) for c in modes]
            clients = [up.enter_context(MasterClient([s.endpoint("master_clients")], s.security())) for s in stacks]
            for _ in range(RUNS):  # interleaved, so load falls on each alike
                for curve, stack, mc in zip(modes, stacks, clients, strict=True):
                    results.setdefault(bus_row(curve), []).append(via_bus(mc, stack, path, expected))
        results["raw pipe (cat, Python reads the pipe)"] = repeat(lambda: via_pipe(["cat", str(path)], expected))
        with B.ssh_baseline(args) as ssh:
            if ssh is not None:
                results["ssh localhost cat, fresh connection"] = repeat(
                    lambda: via_pipe(ssh.fresh() + ["cat", str(path)], expected)
                )
    rows = []
    for name, runs in results.items():
        med = statistics.median(r.lines_s for r in runs)
        rows.append(
            (
                name,
                f"{med / 1e6:.2f} M",
                ", ".join(f"{r.lines_s / 1e6:.2f}" for r in runs),
                max(r.lost_lines for r in runs),
                all(r.identical for r in runs),
                ", ".join(f"{r.fetched_bytes:,}" for r in runs),
            )
        )
    print(
        B.table(
            [
                "path",
                "lines/s (median)",
                "each run, M lines/s",
                "lost lines",
                "byte-identical",
                "bytes fetched from spool",
            ],
            rows,
        )
    )
    for curve in B.curve_modes(args):
        print(f"CPU seconds per p4bus run, {B.curve_label(curve)} (wall / agent / broker / client):")
        for r in results[bus_row(curve)]:
            print(f"  {r.seconds:.2f} s / " + " / ".join(f"{name} {cpu:.2f}" for name, cpu in r.cpu_s.items()))
    first = bus_row(B.curve_modes(args)[0])
    bus = statistics.median(r.lines_s for r in results[first])
    lost = max(r.lost_lines for r in results[first])
    verdict = "met" if bus >= TARGET_LINES_S and lost == 0 else "NOT met"
    print(
        f"target >= {TARGET_LINES_S / 1e6:g} M lines/s with 0 lost ({first}): {verdict} "
        f"({bus / 1e6:.2f} M lines/s, {lost} lost)"
    )


if __name__ == "__main__":
    main()
