"""Aggregate output: 50 agents each streaming 200,000 lines at once through one broker.

Real agent processes (not the simulator: the output path -- keeper, spool, pump, PUB -- is what
is measured), each running `cat` of one file of ``--lines`` lines of 100 bytes, all Execs sent
back to back. One subscriber to ``log.`` and ``cmd.`` on the broker counts what arrives live and
detects loss two ways: a chunk whose byte offset is not where its command's stream ended so far,
and a hole in the publishers' seq numbers. Then the broker's journal is read back through the
replay API and counted the same way.

Reported: lines per second through the broker (all lines over first Exec -> the last command's
end, when all its output was published; valid when the journal holds every line), lines lost in
the journal (the goal is 0) and at the live subscriber (with how the loss showed), the broker's
CPU (% of one core, first Exec -> the last output or end the subscriber received) and the
agents' together.

``--brokers 2``: two replicated brokers started as ``p4bus up --brokers 2`` starts them (every
agent publishes each event to both). The live reader is then the one every client of several
brokers uses (``ReplayClient.history_then_live`` on both xpubs and replays: each event once,
holes repaired from either journal, what neither has reported lost), and each broker's journal
is read back and counted.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from bench import common as B
from bench.logs import LINE_BYTES
from broker.client import ReplayClient
from common import ids, topics, zmqutil
from common import protocol as P
from common.rpc import MasterClient
from common.sequence import Gap

RUN_TIMEOUT_S = 600.0
# Every command ended and no output for this long: what has not arrived is not coming.
QUIET_S = 3.0


def write_lines(path: Path, n: int) -> int:
    """``n`` lines of LINE_BYTES bytes; returns the file's size."""
    pad = "x" * (LINE_BYTES - 11)
    path.write_bytes("".join(f"{i:09d} {pad}\n" for i in range(n)).encode())
    return n * LINE_BYTES


@dataclass
class Count:
    """What a reader of log events saw: bytes and lines per command, and every sign of loss."""

    size: int  # bytes each command's stdout should have
    ends: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # cmd id -> stdout bytes so far
    lines: int = 0
    offset_gaps: int = 0  # chunks that did not start where the stream ended
    gap_bytes: int = 0
    seq_holes: int = 0
    last_seq: dict[tuple[str, str, str], int] = field(default_factory=dict)
    duplicates: int = 0

    def add(self, ev: P.Event) -> None:
        key = (ev.source, ev.epoch, topics.kind(ev.topic))
        last = self.last_seq.get(key)
        if last is not None and ev.seq > last + 1:
            self.seq_holes += ev.seq - last - 1
        if last is None or ev.seq > last:
            self.last_seq[key] = ev.seq
        if not isinstance(ev, P.LogChunk) or ev.stream != P.STDOUT:
            return
        end = self.ends[ev.cmd_id]
        if ev.offset + len(ev.data) <= end:
            self.duplicates += 1
            return
        if ev.offset > end:
            self.offset_gaps += 1
            self.gap_bytes += ev.offset - end
        data = ev.data[max(0, end - ev.offset) :]
        self.ends[ev.cmd_id] = ev.offset + len(ev.data)
        self.lines += data.count(b"\n")

    def whole(self, cmd_id: str) -> bool:
        return self.ends.get(cmd_id, 0) >= self.size


@dataclass
class Result:
    agents: int
    lines_each: int
    seconds: float  # first Exec -> the last command's end (agent's ended_at): all its output published
    followed_s: float  # first Exec -> the last output or end the subscriber received
    live: Count
    reported_lost: int  # events the several-broker reader reported lost (it repairs what a journal has)
    journals: dict[str, Count]  # broker name -> its journal read back
    journal_s: float
    brokers_cpu_s: dict[str, float]
    agents_cpu_s: float
    failed: list[str]


# What the live reader yields: an event to count, or None when nothing new came (a tick).
Feed = Generator[P.Event | None, None, None]


def plain_feed(sub: zmq.Socket) -> Feed:
    """One plain SUB on the one broker: what it receives, nothing repaired."""
    while True:
        if not sub.poll(200):
            yield None
            continue
        while True:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            yield P.decode_event(frames)


def spliced_feed(ctx: zmq.Context, stack: B.BusStack, since_ts: float, lost: list[Gap]) -> Feed:
    """The reader every client of several brokers uses (history_then_live on all xpubs and
    replays): each event once, holes repaired from the journals, what none has reported to
    ``lost``. Beacons come through as ticks: it yields nothing while idle otherwise."""
    brokers = stack.stack.config().bus_brokers()
    events = ReplayClient.history_then_live(
        ctx,
        [b.xpub for b in brokers],
        [b.replay for b in brokers],
        stack.security(),
        prefixes=[topics.LOG + ".", topics.CMD + ".", "beacon."],
        since_ts=since_ts,
        timeout_s=30.0,
        on_missing=lambda gap, _why: lost.append(gap),
    )
    try:
        for got in events:
            yield None if isinstance(got.event, P.Beacon) else got.event
    finally:
        events.close()


def run(stack: B.BusStack, n_lines: int, path: Path) -> Result:
    size = n_lines * LINE_BYTES
    ctx: zmq.Context = zmq.Context.instance()
    security = stack.security()
    live = Count(size)
    lost: list[Gap] = []
    sub: zmq.Socket | None = None
    if len(stack.brokers) > 1:
        feed = spliced_feed(ctx, stack, time.time(), lost)
        while next(feed) is not None:  # until a beacon: the reader is live on the bus
            pass
    else:
        sub = zmqutil.sub(ctx, stack.endpoint("broker_xpub"), security, [topics.LOG + ".", topics.CMD + ".", "beacon."])
        B.live_subscription(sub)
        sub.setsockopt(zmq.UNSUBSCRIBE, b"beacon.")  # from here on only what is counted
        feed = plain_feed(sub)
    try:
        pids = [stack.agent_pid(i) for i in range(len(stack.agents))]
        brokers_before = {name: B.proc_usage(stack.pid(name)).cpu_s for name in stack.brokers}
        agents_before = sum(B.proc_usage(p).cpu_s for p in pids)
        cmd_ids = {ids.new_id("c"): a.id for a in stack.agents}
        done: dict[str, P.CmdStatus] = {}
        t0 = last = time.perf_counter()  # last: when the latest output or end arrived
        started = time.time()
        with MasterClient([stack.endpoint("master_clients")], security, timeout=30.0) as mc:
            for cmd_id, agent in cmd_ids.items():
                mc.exec(P.CmdSpec(argv=["cat", str(path)]), cmd_id=cmd_id, agent=agent)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            next_ask = time.monotonic() + 1.0
            for ev in feed:
                if ev is not None:
                    before = live.lines
                    live.add(ev)
                    if isinstance(ev, P.CmdDone) and ev.cmd_id in cmd_ids:
                        done[ev.cmd_id] = ev.status
                        last = time.perf_counter()
                    elif live.lines != before:
                        last = time.perf_counter()
                if len(done) == len(cmd_ids) and all(live.whole(c) for c in cmd_ids):
                    break
                if time.monotonic() >= deadline:
                    break
                if time.monotonic() >= next_ask:
                    next_ask = time.monotonic() + 1.0
                    # A CmdDone this subscriber missed is in the agent's spool.
                    for cmd_id, agent in cmd_ids.items():
                        if cmd_id not in done and (st := mc.query([cmd_id], agent=agent)[0]).state == "done":
                            done[cmd_id] = st
                            last = time.perf_counter()
                    if len(done) == len(cmd_ids) and time.perf_counter() - last >= QUIET_S:
                        break  # every command ended and its output stopped coming: the rest is lost
            seconds = last - t0
        brokers_cpu = {name: B.proc_usage(stack.pid(name)).cpu_s - cpu for name, cpu in brokers_before.items()}
        agents_cpu = sum(B.proc_usage(p).cpu_s for p in pids) - agents_before
    finally:
        feed.close()
        if sub is not None:
            sub.close(linger=0)
    ended = max((st.ended_at for st in done.values()), default=time.time())
    failed = [f"{c}: exit {s.exit_code} {s.error}" for c, s in done.items() if s.exit_code != 0 or s.error]
    failed += [f"{c}: no CmdDone" for c in cmd_ids if c not in done]
    t1 = time.perf_counter()
    journals = {}
    for name, broker in zip(stack.brokers, stack.stack.config().bus_brokers(), strict=True):
        journals[name] = journal = Count(size)
        with ReplayClient(ctx, broker.replay, security, timeout_s=30.0) as rc:
            for page in rc.pages(prefix=topics.LOG + "."):
                for _id, _topic, body in page:
                    ev = P.decode(body, P.Event)
                    if isinstance(ev, P.LogChunk) and ev.cmd_id in cmd_ids:
                        journal.add(ev)
    return Result(
        len(cmd_ids),
        n_lines,
        ended - started,
        seconds,
        live,
        sum(g.count for g in lost),
        journals,
        time.perf_counter() - t1,
        brokers_cpu,
        agents_cpu,
        failed,
    )


def main() -> None:
    p = B.parser(__doc__)
    p.add_argument("--agents", type=int, default=50, help="agents, each running one command (default 50)")
    p.add_argument("--lines", type=int, default=200_000, help="lines of 100 bytes per command (default 200,000)")
    p.add_argument(
        "--brokers", type=int, default=1, choices=[1, 2], help="replicated brokers, each getting every line (default 1)"
    )
    args = p.parse_args()
    print(B.machine())
    with B.workdir(args, "fanout") as tmp:
        path = tmp / "lines.txt"
        write_lines(path, args.lines)
        agents = [
            B.AgentSpec(f"agent-{i + 1:02d}", ["cat"], {"workspace_roots": [str(tmp)]}) for i in range(args.agents)
        ]
        t0 = time.monotonic()
        with B.BusStack(tmp / "stack", agents, brokers=args.brokers) as stack:
            print(f"{args.agents} agents, {args.brokers} broker(s) up in {time.monotonic() - t0:.1f} s", flush=True)
            r = run(stack, args.lines, path)
    report(r)


def report(r: Result) -> None:
    total = r.agents * r.lines_each
    several = len(r.journals) > 1
    reader = "one reader of both brokers (history_then_live)" if several else "one plain SUB"
    cpu = ", ".join(f"{name} {s:.2f} ({100 * s / r.followed_s:.1f} %)" for name, s in r.brokers_cpu_s.items())
    print(
        B.table(
            [
                "brokers",
                "agents x lines",
                "first Exec -> last end s",
                "lines/s (each broker)",
                "MB/s",
                f"broker CPU s (% of a core over {r.followed_s:.1f} s)",
                "agents CPU s, all",
                "lost in each journal (offset gaps)",
                f"received live by {reader}",
                "lost live (offset gaps, seq holes; reported lost)",
                "journals read back s",
            ],
            [
                (
                    len(r.journals),
                    f"{r.agents} x {r.lines_each:,}",
                    r.seconds,
                    int(total / r.seconds),
                    total * LINE_BYTES / r.seconds / 1e6,
                    cpu,
                    r.agents_cpu_s,
                    ", ".join(f"{total - j.lines:,} ({j.offset_gaps})" for j in r.journals.values()),
                    r.live.lines,
                    f"{total - r.live.lines:,} ({r.live.offset_gaps}, {r.live.seq_holes}; "
                    f"{r.reported_lost if several else '–'})",
                    r.journal_s,
                )
            ],
        )
    )
    if r.failed:
        print(f"commands that did not end well: {r.failed[:5]}")
    for name, j in r.journals.items():
        journal_lost = total - j.lines
        print(f"goal 0 lines lost ({name}'s journal): {'met' if journal_lost == 0 else 'NOT met'} ({journal_lost:,})")
    lost = total - r.live.lines
    if not lost:
        print(f"live, {reader}: every line received")
    elif several:
        print(f"live, {reader}: {lost:,} lines not received ({r.reported_lost} events reported lost)")
    else:
        print(
            f"live, {reader}: {lost:,} lines not received, each within an offset gap or a seq hole it saw "
            "(the broker drops for a subscriber that falls behind; `p4bus tail` and the runner fetch such "
            "holes back from the journal or the spool)"
        )


if __name__ == "__main__":
    main()
