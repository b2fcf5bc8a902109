"""A light agent simulator for the benches at scale: many agents in one process, each its own
DEALER with its own CURVE key (role agent, named by its id, as a real agent's), speaking the real
protocol of common/protocol.py to a real master.

Every simulated agent says Hello until welcomed, then a Heartbeat every ``heartbeat_s`` (the
agents' sends are spread evenly over the interval, as independent hosts would be). With
``answers`` (recorded results keyed by the p4 arguments), an Exec is answered at once with an
ExecReply whose status is done -- the same path as an agent's refusal -- and a CmdDone is
published on the agent's own PUB, like agent/pump.py, so the orchestrator does all its usual
work without any process running. An Exec with no recorded answer ends with exit code 1 and
says so on stderr (the bench counts those jobs as failed, nothing is hidden).

It is run by a bench as ``python -m bench.agentsim CONFIG`` (CONFIG: a 0600 JSON file holding the
agents' secret keys, never argv) and driven over its stdin/stdout, one line each way:

- it prints ``ready N`` once all N agents are welcomed;
- ``kill ID`` closes that agent's sockets abruptly (linger 0, no Bye), then prints
  ``killed ID T`` with T the wall-clock time just before the close;
- ``gate`` holds every Exec from then on unanswered (prints ``gated``), ``go`` answers the held
  ones and every later one at once again (prints ``went N``), so a bench can fill a queue first
  and then time how fast it drains;
- with ``hold``, every Exec is accepted as running and never ends (a queue that stays deep);
- ``stats`` prints ``stats {json}`` (execs answered, misses, heartbeats sent, sends dropped);
- end of input stops it (also without Byes: the bench kills agents, it does not retire them).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq

from common import keys, roles, zmqutil
from common import protocol as P
from common.auth import Security
from common.publisher import Publisher

# Requests answered per socket per wake-up, so one busy agent does not starve the others.
DRAIN_BATCH = 64
# Query answers are kept for this many commands per agent (the orchestrator reconciles recent ones).
REMEMBER = 1000


class Answer(msgspec.Struct):
    """A command's recorded result, replayed for every Exec of the same p4 arguments."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


class SimAgent(msgspec.Struct):
    id: str
    public: str  # Z85
    secret: str  # Z85
    workspaces: list[str] = []
    slots: int = 1


class SimConfig(msgspec.Struct):
    master: str  # the master's agents endpoint
    broker: str  # the broker's XSUB endpoint (used only with answers)
    keyring: str  # path of the stack's keyring (pins the master's and the broker's keys)
    agents: list[SimAgent]
    heartbeat_s: float = 1.0
    answers: dict[str, Answer] = {}  # answer_key(argv) -> result
    # Accept every Exec as running and never finish it (a queue that stays deep).
    hold: bool = False


def answer_key(argv: list[str]) -> str:
    """The p4 arguments without the executable (its path differs between stacks)."""
    return json.dumps(argv[1:])


def write_config(path: Path, cfg: SimConfig) -> None:
    """The config file, readable by its owner only (it holds secret keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(cfg))


@dataclass
class _Live:
    spec: SimAgent
    sock: zmq.Socket
    events: Publisher | None
    welcomed: bool = False
    done: dict[str, P.CmdStatus] = field(default_factory=dict)  # commands it answered, by id


class Simulator:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        keyring = keys.Keyring(Path(cfg.keyring))
        self.agents: dict[str, _Live] = {}
        self.by_sock: dict[zmq.Socket, _Live] = {}
        self.counters = {"execs": 0, "misses": 0, "heartbeats": 0, "hellos": 0, "dropped": 0}
        now = time.monotonic()
        # (due, agent id) in due order: all share one interval, so a rotating deque stays sorted.
        self.schedule: deque[tuple[float, str]] = deque()
        n = len(cfg.agents)
        for i, spec in enumerate(cfg.agents):
            security = Security(keys.KeyPair(spec.id, spec.public.encode(), spec.secret.encode()), keyring)
            sock = zmqutil.dealer(self.ctx, cfg.master, security, roles.MASTER, immediate=True)
            events = None
            if cfg.answers:
                events = Publisher(zmqutil.pub(self.ctx, cfg.broker, security), spec.id, f"sim{os.getpid()}", 0.0)
            live = _Live(spec, sock, events)
            self.agents[spec.id] = live
            self.by_sock[sock] = live
            self.schedule.append((now + cfg.heartbeat_s * i / max(1, n), spec.id))
        self.poller = zmq.Poller()
        for sock in self.by_sock:
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(sys.stdin.fileno(), zmq.POLLIN)
        self._announced = False
        self._pending = b""  # control input not yet ended by a newline
        # While the bench holds the gate closed: Execs received, answered when it opens.
        self.gated: list[tuple[_Live, P.Exec]] | None = None

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        stdin = sys.stdin.fileno()
        while True:
            timeout = max(0, int((self.schedule[0][0] - time.monotonic()) * 1000) + 1) if self.schedule else 1000
            for sock, _ in self.poller.poll(timeout):
                if sock == stdin:
                    data = os.read(stdin, 4096)
                    if not data:
                        self._close()
                        return
                    self._pending += data
                    while b"\n" in self._pending:
                        line, self._pending = self._pending.split(b"\n", 1)
                        self._command(line.decode())
                elif sock in self.by_sock:
                    self._drain(self.by_sock[sock])
            self._beat(time.monotonic())
            if not self._announced and all(a.welcomed for a in self.agents.values()):
                self._announced = True
                _say(f"ready {len(self.agents)}")

    def _beat(self, now: float) -> None:
        while self.schedule and self.schedule[0][0] <= now:
            due, agent_id = self.schedule.popleft()
            live = self.agents.get(agent_id)
            if live is None:
                continue  # killed
            self._send(live, P.Heartbeat(free_slots=live.spec.slots) if live.welcomed else self._hello(live))
            self.counters["heartbeats" if live.welcomed else "hellos"] += 1
            # From the due time, not from now: a late wake-up does not drift the schedule.
            self.schedule.append((max(due + self.cfg.heartbeat_s, now), agent_id))

    def _drain(self, live: _Live) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frame = live.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = P.decode(frame, P.MasterToAgent)
            if isinstance(msg, P.Welcome):
                live.welcomed = True
            elif isinstance(msg, P.Reregister):
                live.welcomed = False
                self._send(live, self._hello(live))
            elif isinstance(msg, P.Exec) and self.gated is not None:
                self.gated.append((live, msg))
            elif isinstance(msg, P.Exec):
                self._send(live, self._exec(live, msg))
            elif isinstance(msg, P.Query):
                unknown = P.CmdStatus(cmd_id="")
                statuses = [live.done.get(c, msgspec.structs.replace(unknown, cmd_id=c)) for c in msg.cmd_ids]
                self._send(live, P.QueryReply(req_id=msg.req_id, statuses=statuses))
            elif isinstance(msg, P.Kill | P.Fetch):
                text = f"the simulated agent {live.spec.id} keeps no spool"
                self._send(live, P.ErrorReply(req_id=msg.req_id, code="unknown_cmd", message=text))
            elif isinstance(msg, P.ErrorReply):
                _say(f"error {live.spec.id} {msg.code} {msg.message}")

    def _exec(self, live: _Live, req: P.Exec) -> P.Base:
        self.counters["execs"] += 1
        known = live.done.get(req.cmd_id)
        if known is not None:
            return P.ExecReply(req_id=req.req_id, cmd_id=req.cmd_id, agent=live.spec.id, status=known, duplicate=True)
        if self.cfg.hold:
            status = P.CmdStatus(cmd_id=req.cmd_id, job_id=req.job_id, agent=live.spec.id, state="running", pid=1)
            self._remember(live, status)
            return P.ExecReply(req_id=req.req_id, cmd_id=req.cmd_id, agent=live.spec.id, status=status)
        answer = self.cfg.answers.get(answer_key(req.spec.argv))
        if answer is None:
            self.counters["misses"] += 1
            answer = Answer(1, stderr=f"agentsim: no recorded answer for {req.spec.argv[1:]}\n".encode())
        now = time.time()
        status = P.CmdStatus(
            cmd_id=req.cmd_id,
            job_id=req.job_id,
            agent=live.spec.id,
            state="done",
            exit_code=answer.exit_code,
            started_at=now,
            ended_at=now,
            stdout_bytes=len(answer.stdout),
            stderr_bytes=len(answer.stderr),
            stdout=answer.stdout,
            stderr=answer.stderr,
        )
        self._remember(live, status)
        if live.events is not None:
            live.events.publish(P.CmdDone, f"cmd.{req.cmd_id}", job_id=req.job_id, cmd_id=req.cmd_id, status=status)
        return P.ExecReply(req_id=req.req_id, cmd_id=req.cmd_id, agent=live.spec.id, status=status)

    def _remember(self, live: _Live, status: P.CmdStatus) -> None:
        live.done[status.cmd_id] = status
        if len(live.done) > REMEMBER:
            del live.done[next(iter(live.done))]

    def _hello(self, live: _Live) -> P.Hello:
        info = P.AgentInfo(
            agent_id=live.spec.id,
            host="agentsim",
            workspaces=list(live.spec.workspaces),
            slots=live.spec.slots,
            epoch=f"sim{os.getpid()}",
        )
        return P.Hello(proto=P.PROTOCOL_VERSION, agent=info, heartbeat_s=self.cfg.heartbeat_s)

    def _send(self, live: _Live, msg: P.Base) -> None:
        try:
            live.sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["dropped"] += 1

    # ------------------------------------------------------------------ control
    def _command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "kill" and len(words) == 2 and words[1] in self.agents:
            live = self.agents.pop(words[1])
            self.poller.unregister(live.sock)
            del self.by_sock[live.sock]
            t = time.time()
            live.sock.close(linger=0)
            if live.events is not None:
                live.events.close(linger=0)
            _say(f"killed {words[1]} {t:.6f}")
        elif words[0] == "gate":
            self.gated = self.gated or []
            _say("gated")
        elif words[0] == "go":
            held, self.gated = self.gated or [], None
            for live, req in held:
                if live.spec.id in self.agents:
                    self._send(live, self._exec(live, req))
            _say(f"went {len(held)}")
        elif words[0] == "stats":
            _say("stats " + json.dumps(self.counters, separators=(",", ":")))
        else:
            _say(f"error control: unknown command {line.strip()!r} (kill ID, gate, go, stats)")

    def _close(self) -> None:
        for live in self.agents.values():
            live.sock.close(linger=0)
            if live.events is not None:
                live.events.close(linger=0)
        self.ctx.term()


# ---------------------------------------------------------------------------- the bench's side
def new_agents(ids: list[str], workspaces: dict[str, list[str]] | None = None, slots: int = 1) -> list[SimAgent]:
    """Simulated agents with fresh key pairs (``workspaces``: agent id -> the workspaces it holds)."""
    out = []
    for agent_id in ids:
        public, secret = zmq.curve_keypair()
        held = (workspaces or {}).get(agent_id, [])
        out.append(SimAgent(agent_id, public.decode(), secret.decode(), held, max(slots, len(held))))
    return out


def authorize(keyring: Path, agents: list[SimAgent]) -> None:
    """Put every agent's key in the keyring as role agent, in one write (``keys.authorize`` per
    key would rewrite the file a thousand times)."""
    entries = keys.read(keyring)
    for a in agents:
        entries[a.id] = keys.Entry(a.id, roles.AGENT, a.public)
    keys.write(keyring, entries)


class SimProcess:
    """One simulator process, driven over its stdin and stdout."""

    def __init__(self, config: Path, log: Path) -> None:
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.agentsim", str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        self._buf = b""
        self.log = log
        self.errors: list[str] = []  # "error ..." lines: a master's refusal, a bad control line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str, timeout: float) -> list[str]:
        """The words of the next line starting with ``word``."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                words = line.decode().split()
                if words and words[0] == word:
                    return words
                if words and words[0] == "error" and len(self.errors) < 100:
                    self.errors.append(line.decode())
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError(f"agentsim {self.pid} said no {word!r} within {timeout:g}s (log {self.log})")
            data = os.read(self._out, 65536)
            if not data:
                raise RuntimeError(f"agentsim {self.pid} exited with {self.proc.wait()} (log {self.log})")
            self._buf += data

    def say(self, line: str) -> None:
        self._in.write(line.encode() + b"\n")
        self._in.flush()

    def kill_agent(self, agent_id: str) -> float:
        """Close one agent's sockets abruptly; the wall-clock time it happened."""
        self.say(f"kill {agent_id}")
        return float(self.expect("killed", 10.0)[2])

    def gate(self) -> None:
        self.say("gate")
        self.expect("gated", 10.0)

    def go(self) -> int:
        """Open the gate; how many held Execs were answered."""
        self.say("go")
        return int(self.expect("went", 10.0)[1])

    def stats(self) -> dict[str, int]:
        self.say("stats")
        got: dict[str, int] = json.loads(self.expect("stats", 10.0)[1])
        return got

    def sigkill(self) -> float:
        t = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return t

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self._in.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.sigkill()


@contextlib.contextmanager
def simulators(
    tmp: Path,
    base: SimConfig,
    per_process: int,
    ready_timeout: float = 120.0,
) -> Iterator[list[SimProcess]]:
    """``base.agents`` split over processes of ``per_process`` agents each, all welcomed."""
    procs: list[SimProcess] = []
    try:
        for i in range(0, len(base.agents), per_process):
            path = tmp / f"agentsim-{i // per_process}.json"
            write_config(path, msgspec.structs.replace(base, agents=base.agents[i : i + per_process]))
            procs.append(SimProcess(path, tmp / f"agentsim-{i // per_process}.log"))
        for p in procs:
            p.expect("ready", ready_timeout)
        yield procs
    finally:
        for p in procs:
            p.stop()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.agentsim CONFIG (a JSON file written by bench.agentsim.write_config)")
    cfg = msgspec.json.decode(Path(sys.argv[1]).read_bytes(), type=SimConfig)
    Simulator(cfg).run()


if __name__ == "__main__":
    main()
