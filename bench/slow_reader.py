"""`p4bus events` piped into a slow reader while a flood of events is published: no crash, nothing missing.

Two readers, each against its own broker and a flood of small events (1,000,000 by default)
from one publisher that then falls silent (its beacons go on):

- **pause**: reads the first event, then nothing for 30 s (``--pause-s``) while the flood
  passes: the pipe fills, then ``p4bus events``' queue, then the broker's queue for it, and the
  broker drops the rest for that subscriber; it then reads as fast as it can. The publisher is
  silent by then, so the tail of the loss shows no hole of its own: the holes a flood this fast
  also leaves mid-stream bring it back, or else the publisher's beacon does.
- **slow**: takes ``--delay-ms`` (1 ms) per event, from the first to the last.

The reader is a separate process reading `p4bus events`' stdout through a pipe, as
``p4bus events | reader`` would. It counts the flood's events it received (distinct seqs,
duplicates, seqs out of order); the bench counts ``p4bus events``' crashes (a signal, a libzmq
assertion on stderr) and what it reported missing on stderr. Bounded: each reader is given
three times its expected time plus two minutes, then stopped, and what it lacks is counted as
missing.

``python -m bench.slow_reader`` (both readers, 1,000,000 events each, about 25 minutes on two
cores: the slow reader alone needs 1,000,000 x 1 ms); ``--events``, ``--mode``, ``--pause-s``,
``--delay-ms`` to change them. The same code runs the CI-sized tests
(tests/integration/test_slow_reader.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import zmq

from bench import common as B
from broker.client import ReplayClient
from common import ids, roles, topics, zmqutil
from common import protocol as P
from common.publisher import Publisher
from p4bus.commands.events import EXIT_MISSING
from p4bus.harness.stack import Stack, wait_for

REPO = Path(__file__).resolve().parent.parent
EVENTS = 1_000_000
PAUSE_S = 30.0
DELAY_MS = 1.0
# The publisher stays at most this far ahead of the broker: its own queue (limits.EVENT_HWM,
# 200,000) then never overflows, so every event reaches the journal and what the reader lacks
# is the subscriber side's doing alone.
AHEAD_MAX = 100_000
MARGIN_S = 120.0


@dataclass
class Result:
    mode: str
    published: int  # flood events published (each one reached the broker's journal)
    received: int  # distinct flood events the reader got
    missing: int  # published - received
    duplicates: int
    out_of_order: int  # events whose seq was not above the one before
    crashes: int  # `p4bus events` ended by a signal, or printed a libzmq assertion
    reported_missing: int  # events `p4bus events` said on stderr it could not deliver
    exit_code: int  # of `p4bus events` after SIGTERM: 0, or 3 when it reported something missing
    seconds: float  # from the first flood event to the reader's last
    replays: int  # replay requests the broker answered meanwhile (the repairs)


# ---------------------------------------------------------------------------- the reader process
def consume(source: str, expect: int, delay_s: float, pause_s: float, go_file: str, stream: IO[bytes]) -> dict:
    """Read `p4bus events` lines from ``stream``: says "live" on stdout at the first line of
    ``source``, pauses (``pause_s``, or until ``go_file`` exists), then reads ``delay_s`` per line
    until it has ``expect`` distinct events of ``job.<source>`` or the stream ends."""
    topic = topics.job(source).encode()
    seen: set[int] = set()
    duplicates = out_of_order = 0
    last = 0
    live = False
    signal.signal(signal.SIGTERM, _stop)
    try:
        for line in stream:
            if topic not in line:
                continue
            ev = json.loads(line)
            if ev["topic"] != topic.decode():
                continue
            if ev["state"] == "probe":  # the bench's: the first one says the reader is live
                if not live:
                    live = True
                    print("live", flush=True)
                    _pause(pause_s, go_file)
                continue
            seq = ev["seq"]
            duplicates += seq in seen
            out_of_order += seq <= last
            last = max(last, seq)
            seen.add(seq)
            if delay_s:
                time.sleep(delay_s)  # the reader's own speed, not a wait for anything
            if len(seen) >= expect:
                break
    except _Stopped:
        pass  # out of time: count what came
    return {"received": len(seen), "duplicates": duplicates, "out_of_order": out_of_order}


class _Stopped(Exception):
    pass


def _stop(_signum: int, _frame: object) -> None:
    raise _Stopped


def _pause(pause_s: float, go_file: str) -> None:
    if go_file:
        while not os.path.exists(go_file):
            time.sleep(0.05)
    else:
        time.sleep(pause_s)


# ---------------------------------------------------------------------------- the bench side
class Flood:
    """A publisher with an agent's key (beacons on, as every service's), on a broker of ``stack``."""

    def __init__(self, stack: Stack, source: str, beacon_s: float = 2.0) -> None:
        self.stack = stack
        self.source = source
        self.topic = topics.job(source)
        ctx: zmq.Context = zmq.Context.instance()
        self.replay = ReplayClient(ctx, stack.endpoint("broker_replay"), stack.security())
        sock = zmqutil.pub(ctx, stack.endpoint("broker_xsub"), stack.security(source, roles.AGENT))
        self.pub = Publisher(sock, source, ids.new_epoch(), beacon_s=beacon_s)

    def close(self) -> None:
        self.pub.close(linger=0)
        self.replay.close()

    def probe(self) -> None:
        self.pub.publish(P.JobChanged, self.topic, job_id=self.source, state="probe")

    def publish(self, n: int) -> None:
        """``n`` events, never more than AHEAD_MAX ahead of the broker; then until all are journalled."""
        start = self.replay.stats()["events_in"]
        for i in range(n):
            if i % 10_000 == 0:
                self.keep_up(start, i)
            self.pub.publish(P.JobChanged, self.topic, job_id=self.source, state=str(i))
        wait_for(lambda: self.journalled(start + n), 300, "every event journalled")

    def keep_up(self, start: int, sent: int) -> None:
        wait_for(lambda: self.replay.stats()["events_in"] - start >= sent - AHEAD_MAX, 120, "the broker to keep up")

    def journalled(self, at_least: int) -> bool:
        c = self.replay.stats()
        return c["journalled"] >= at_least and c["journalled"] == c["events_in"]


class Pipeline:
    """`p4bus events --topic job.` piped into the reader process."""

    def __init__(self, stack: Stack, flood: Flood, expect: int, delay_ms: float, pause_s: float, go_file: str) -> None:
        # A file, not a pipe: `p4bus events` must never block on a stderr nobody reads.
        self.stderr_path = stack.log_dir / f"events-{flood.source}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.events = subprocess.Popen(
                [sys.executable, "-m", "p4bus", "--config", str(stack.config_file()), "events", "--topic", "job."],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO,
            )
        assert self.events.stdout is not None
        reader_argv = [sys.executable, "-m", "bench.slow_reader", "--consume", flood.source, "--events", str(expect)]
        reader_argv += ["--delay-ms", str(delay_ms), "--pause-s", str(pause_s), "--go-file", go_file]
        self.reader = subprocess.Popen(reader_argv, stdin=self.events.stdout, stdout=subprocess.PIPE, cwd=REPO)
        self.events.stdout.close()  # the reader's now: it sees EOF when `p4bus events` ends

    def wait_live(self, flood: Flood) -> None:
        """Probes until the reader has one, so the flood starts on a live subscription."""
        assert self.reader.stdout is not None
        os.set_blocking(self.reader.stdout.fileno(), False)
        buf = b""

        def live() -> bool:
            nonlocal buf
            flood.probe()
            with contextlib.suppress(BlockingIOError, TypeError):
                buf += self.reader.stdout.read() or b""  # type: ignore[union-attr]
            if self.events.poll() is not None:
                raise RuntimeError(f"p4bus events exited with {self.events.returncode}: {self._stderr()}")
            return b"live" in buf

        wait_for(live, 60, "the reader to receive a probe", interval=0.2)
        os.set_blocking(self.reader.stdout.fileno(), True)

    def finish(self, timeout_s: float) -> tuple[dict, int, str]:
        """The reader's counts (after at most ``timeout_s``), `p4bus events`' exit code after
        SIGTERM, and its stderr."""
        try:
            out, _ = self.reader.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.reader.terminate()  # it prints what it has received so far
            out, _ = self.reader.communicate(timeout=30)
        counts = json.loads(out.decode().split("live", 1)[-1])
        self.events.send_signal(signal.SIGTERM)
        try:
            code = self.events.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.events.kill()
            code = self.events.wait()
        return counts, code, self._stderr()

    def _stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        for proc in (self.reader, self.events):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def reported_missing(stderr: str) -> int:
    """Events `p4bus events` named as missing ("missing N job event(s), ...")."""
    return sum(int(line.split()[3]) for line in stderr.splitlines() if line.startswith("p4bus events: missing "))


def run(stack: Stack, mode: str, n: int, delay_ms: float = 0.0, pause_s: float = 0.0, go_file: str = "") -> Result:
    """One reader against a flood of ``n`` events on ``stack`` (whose broker is running). With a
    ``go_file`` the paused reader waits for that file, which is created once the flood is journalled."""
    flood = Flood(stack, f"flood-{mode}-{ids.new_epoch()[:6]}")
    pipeline = Pipeline(stack, flood, n, delay_ms, pause_s, go_file)
    try:
        pipeline.wait_live(flood)
        replays = flood.replay.stats()["replay_requests"]
        t0 = time.monotonic()
        flood.publish(n)
        if go_file:
            Path(go_file).touch()
        budget = pause_s + n * delay_ms / 1000 * 3 + MARGIN_S  # a 1 ms sleep takes 2 ms on a busy machine
        counts, code, stderr = pipeline.finish(budget)
        seconds = time.monotonic() - t0
        replays = flood.replay.stats()["replay_requests"] - replays
    finally:
        pipeline.kill()
        flood.close()
    received = counts["received"]
    crashed = "Assertion failed" in stderr or code not in (0, EXIT_MISSING)  # a signal is < 0
    return Result(
        mode,
        n,
        received,
        n - received,
        counts["duplicates"],
        counts["out_of_order"],
        int(crashed),
        reported_missing(stderr),
        code,
        seconds,
        replays,
    )


@contextlib.contextmanager
def broker_stack(tmp: Path) -> Iterator[Stack]:
    """A broker alone, with CURVE, on free loopback ports."""
    tree = {"state_dir": str(tmp / "state"), "port_base": zmqutil.free_port_base(6), "log_level": "warning"}
    stack = Stack(tree, tmp, log_dir=tmp / "logs", cwd=REPO)
    try:
        stack.start("broker")
        wait_for(lambda: answers(stack), 30, "the broker")
        yield stack
    finally:
        stack.stop(grace=2)


def answers(stack: Stack) -> bool:
    with ReplayClient(zmq.Context.instance(), stack.endpoint("broker_replay"), stack.security(), 1.0) as replay:
        try:
            replay.ping()
            return True
        except Exception:
            return False


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    p.add_argument("--events", type=int, default=EVENTS)
    p.add_argument("--mode", choices=["pause", "slow", "both"], default="both")
    p.add_argument("--pause-s", type=float, default=PAUSE_S)
    p.add_argument("--delay-ms", type=float, default=DELAY_MS)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (service logs, journal)")
    # The reader process (the bench starts it): reads `p4bus events` lines of this source on stdin.
    p.add_argument("--consume", metavar="SOURCE", help=argparse.SUPPRESS)
    p.add_argument("--go-file", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.consume:
        delay_s = args.delay_ms / 1000
        counts = consume(args.consume, args.events, delay_s, args.pause_s, args.go_file, sys.stdin.buffer)
        print(json.dumps(counts), flush=True)
        return
    print(B.machine())
    modes = ["pause", "slow"] if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        with B.workdir(args, f"slow-reader-{mode}") as tmp, broker_stack(tmp) as stack:
            if mode == "pause":
                results.append(run(stack, mode, args.events, pause_s=args.pause_s))
            else:
                results.append(run(stack, mode, args.events, delay_ms=args.delay_ms))
        print(f"{mode}: {results[-1]}", flush=True)
    print(B.table(list(asdict(results[0])), [list(asdict(r).values()) for r in results]))


if __name__ == "__main__":
    main()
