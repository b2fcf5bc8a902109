"""Events are believed by who published them (the broker's third frame), not by what they say.

Issue 9 finding 4, reproduced and refused: a forged ``cmd_done`` for a pre-submit hook that was
going to fail; a forged event with an agent's source and epoch and seq 10**15; a forged event
while ``p4bus submit --follow`` and ``p4bus tail`` follow the job. The forger is a process of
its own holding a valid key (role agent, another id): tests/integration/event_forger.py.

The first tests drive a real orchestrator's event handling in-process (its own store and
sockets, no broker) with frames exactly as the broker delivers them, to pin down each rule.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from broker.client import ReplayClient
from common import config as cfgmod
from common import protocol as P
from common import roles, topics, zmqutil
from common.rpc import MasterClient
from common.sequence import Stamper
from common.zmqutil import free_port_base
from orchestrator.service import Orchestrator
from orchestrator.store import CmdState
from tests.conftest import REPO, Stack, wait_for
from tests.e2e.conftest import JobStack
from tests.integration.conftest import journalled

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------- in-process rules


class Orch:
    """An orchestrator with one job whose first command is PENDING (nothing dispatched: the
    test plays the master's and the agents' part)."""

    def __init__(self, tmp: Path) -> None:
        tree = {
            "state_dir": str(tmp / "state"),
            "port_base": free_port_base(6),
            "insecure": True,  # its own sockets are not under test: the frames fed in are
            "orchestrator": {
                "workspaces": {"ws": {"p4port": "1666", "p4user": "u", "p4client": "c", "root": str(tmp / "ws")}}
            },
        }
        self.o = Orchestrator(cfgmod.from_tree(tree, "test"))
        self.o.join_bus()  # as run() does once the orchestrator is active
        job_id, _effects = self.o.engine.submit(
            P.Submit(req_id="r", source="//depot/dev/...", target="//depot/main/...")
        )
        self.job_id = job_id
        (cmd,) = self.o.store.open_commands(job_id)
        self.cmd_id = cmd.cmd_id
        self.agents = {name: Stamper(name, f"epoch-{name}") for name in ("agent-1", "agent-2")}

    def close(self) -> None:
        for s in (self.o.api, self.o.sub):
            s.close(linger=0)
        self.o.events.close(linger=0)
        self.o.channel.close()
        self.o.store.close()

    def state(self) -> CmdState:
        cmd = self.o.store.command(self.cmd_id)
        assert cmd is not None
        return cmd.state

    def started(self, source: str, publisher: str, stamper: Stamper | None = None) -> None:
        st = (stamper or self.agents.get(source) or Stamper(source, "e")).stamp(f"cmd.{self.job_id}.{self.cmd_id}")
        ev = P.CmdStarted(**st, job_id=self.job_id, cmd_id=self.cmd_id, agent=source, pid=42, argv=["p4"])
        self.feed(ev, publisher)

    def done(self, source: str, publisher: str, exit_code: int = 0, **stamp: object) -> None:
        st = (self.agents.get(source) or Stamper(source, "e")).stamp(f"cmd.{self.job_id}.{self.cmd_id}") | stamp
        status = P.CmdStatus(cmd_id=self.cmd_id, job_id=self.job_id, agent=source, state="done", exit_code=exit_code)
        self.feed(P.CmdDone(**st, job_id=self.job_id, cmd_id=self.cmd_id, status=status), publisher)

    def feed(self, ev: P.EventBase, publisher: str) -> None:
        """As the broker delivers it: [topic, body, publisher]."""
        self.o.on_event_frames([*P.encode_event(ev), publisher.encode()])

    def reply(self, agent: str) -> None:
        """The dispatch reply: ``agent`` accepted the command and is running it."""
        status = P.CmdStatus(cmd_id=self.cmd_id, agent=agent, state="running", pid=42)
        self.o.on_dispatch_reply(self.cmd_id, P.ExecReply(req_id="x", cmd_id=self.cmd_id, agent=agent, status=status))

    def counters(self, *names: str) -> tuple[int, ...]:
        return tuple(self.o.counters[n] for n in names)


@pytest.fixture
def orch(tmp_path: Path) -> Iterator[Orch]:
    o = Orch(tmp_path)
    yield o
    o.close()


def test_an_event_in_another_agents_name_is_dropped_and_counted(orch: Orch) -> None:
    orch.reply("agent-1")
    assert orch.state() == CmdState.RUNNING
    orch.done("agent-1", publisher="agent-2")  # agent-2's key, agent-1's name in the body
    assert orch.state() == CmdState.RUNNING
    assert orch.counters("forged_events", "wrong_agent_events") == (1, 0)
    orch.done("agent-1", publisher="agent-1")
    assert orch.state() == CmdState.DONE


def test_a_commands_events_count_only_from_the_agent_it_was_sent_to(orch: Orch) -> None:
    orch.reply("agent-1")
    orch.done("agent-2", publisher="agent-2")  # honest about itself, but not its command
    assert orch.state() == CmdState.RUNNING
    assert orch.counters("forged_events", "wrong_agent_events") == (0, 1)
    orch.done("agent-1", publisher="agent-1")
    assert orch.state() == CmdState.DONE


def test_events_before_the_dispatch_reply_wait_for_it_and_only_its_agents_count(orch: Orch) -> None:
    orch.started("agent-2", publisher="agent-2")
    orch.started("agent-1", publisher="agent-1")
    orch.done("agent-1", publisher="agent-1")
    assert orch.state() == CmdState.PENDING  # held: nobody has said where it went
    orch.reply("agent-1")
    cmd = orch.o.store.command(orch.cmd_id)
    assert cmd is not None and (cmd.state, cmd.agent) == (CmdState.DONE, "agent-1")
    assert orch.counters("forged_events", "wrong_agent_events") == (0, 1)


def test_a_forged_huge_seq_under_an_agents_source_and_epoch_blinds_nobody(orch: Orch) -> None:
    orch.reply("agent-1")
    real = orch.agents["agent-1"]
    # Another key, agent-1's source and epoch, seq 10**15.
    orch.done("agent-1", publisher="agent-2", epoch=real.epoch, seq=10**15)
    orch.started("agent-1", publisher="agent-1")  # agent-1's next real events are still new
    orch.done("agent-1", publisher="agent-1")
    assert orch.state() == CmdState.DONE
    assert orch.counters("forged_events", "duplicate_events") == (1, 0)


def test_on_an_insecure_bus_the_body_is_all_there_is(orch: Orch) -> None:
    """No publisher frame content: today's behaviour (and the log says so once)."""
    orch.reply("agent-1")
    orch.done("agent-1", publisher="")
    assert orch.state() == CmdState.DONE
    assert orch.counters("forged_events", "wrong_agent_events") == (0, 0)
    assert orch.o._insecure_logged


# ---------------------------------------------------------------------------- the broker names the publisher


def test_the_broker_names_each_events_authenticated_publisher_live_and_in_replay(stack: Stack) -> None:
    stack.start("broker")
    ctx = zmq.Context()
    try:
        sub = zmqutil.sub(ctx, stack.endpoint("broker_xpub"), stack.security(), ["job.T"])
        agent = zmqutil.pub(ctx, stack.endpoint("broker_xsub"), stack.security("agent-x", roles.AGENT))
        master = zmqutil.pub(ctx, stack.endpoint("broker_xsub"), stack.security("master"))
        stamper = Stamper("agent-x", "e1")

        def event(state: str) -> list[bytes]:
            return P.encode_event(P.JobChanged(**stamper.stamp("job.T"), job_id="T", state=state))

        def through(pub: zmq.Socket, frames: list[bytes]) -> list[bytes]:
            """Publish until it comes back (PUB drops until connected); what the subscriber got."""

            def arrived() -> list[bytes] | None:
                pub.send_multipart(frames)
                while sub.poll(50):
                    got = sub.recv_multipart()
                    if got[1] == frames[1]:
                        return got
                return None

            return wait_for(arrived, 20, "the event through the broker", interval=0)

        honest = event("honest")
        assert through(agent, honest) == [*honest, b"agent-x"]
        lying = event("lying")  # agent-x's source, from the master's key
        assert through(master, lying) == [*lying, b"master"]
        # A publisher naming a publisher of its choice in a third frame: dropped, not forwarded.
        replay = ReplayClient(ctx, stack.endpoint("broker_replay"), stack.security())
        before = replay.stats()["bad_frames"]
        master.send_multipart([*event("self-named"), b"agent-x"])
        fence = event("fence")
        master.send_multipart(fence)
        assert sub.poll(5000)
        assert sub.recv_multipart() == [*fence, b"master"]  # next in order: the three-frame one is gone
        assert replay.stats()["bad_frames"] == before + 1
        page = replay.page("job.T")
        states = [P.decode(body, P.Event).state for _id, _topic, body in page.events]
        # Each event once (one sent again before the subscriber was connected is journalled again).
        journal = list(dict.fromkeys(zip(states, page.publishers, strict=True)))
        assert journal == [("honest", "agent-x"), ("lying", "master"), ("fence", "master")]
        # `p4bus events` shows it beside each body.
        events = subprocess.Popen(
            [sys.executable, "-m", "p4bus", "--config", str(stack.config_file()), "events", "--topic", "job.T"],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        try:
            assert events.stdout is not None
            lines = [msgspec.json.decode(events.stdout.readline()) for _ in journal]
        finally:
            events.kill()
            events.wait()
        assert [(e["state"], e["source"], e["publisher"]) for e in lines] == [
            (state, "agent-x", publisher) for state, publisher in journal
        ]
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------------------- the attacks, on a whole stack

FORGER = "forger"  # a key of its own, role agent: what any compromised or rogue agent holds


HookStack = Callable[[int], tuple[JobStack, Path]]


@pytest.fixture
def hook_stack(stack: Stack, tmp_path: Path) -> Iterator[HookStack]:
    """A started stack whose pre-submit hook says it is waiting, then blocks until the test
    writes a line to a FIFO, then exits with the code given: the forger strikes while the hook
    runs. (The hook runs in a process group of its own, which outlives a killed agent: a test
    that fails before releasing it has it released here.)"""
    fifo = tmp_path / "hook.fifo"

    def make(exit_code: int) -> tuple[JobStack, Path]:
        os.mkfifo(fifo)
        jobs = JobStack(stack)
        jobs.workspace("ws1", "clean")
        hook = f"echo hook-waiting; read line < {fifo}; echo 'hook: 3 problems' >&2; exit {exit_code}"
        stack.tree["orchestrator"]["site"] = {"pre_submit": [["sh", "-c", hook]]}
        jobs.start()
        return jobs, fifo

    yield make
    if fifo.exists():
        release_if_waiting(fifo)


def release_if_waiting(fifo: Path) -> None:
    """Release whoever reads ``fifo``, without waiting for a reader if there is none."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # ENXIO: nobody is reading it
    with os.fdopen(fd, "w") as f:
        f.write("go\n")


def running_hook(jobs: JobStack, job_id: str) -> P.StageRun:
    """Once the hook runs: its timeline entry (it has printed that it is waiting)."""

    def hook_running() -> P.StageRun | None:
        with jobs.orch() as oc:
            runs = [r for r in oc.job(job_id).timeline if r.argv[:1] == ["sh"] and r.state == "RUNNING"]
        if runs and any(b"hook-waiting" in c.data for c in chunks(jobs, job_id, runs[0].cmd_id)):
            return runs[0]
        return None

    return wait_for(hook_running, 60, "the pre-submit hook to run", interval=0.1)


def chunks(jobs: JobStack, job_id: str, cmd_id: str) -> list[P.LogChunk]:
    return journalled(jobs.stack.endpoint("broker_replay"), jobs.stack.security(), f"log.{job_id}.{cmd_id}", P.LogChunk)


def agent_stamp(jobs: JobStack, job_id: str, cmd_id: str) -> tuple[str, int]:
    """The real agent's epoch and the seq of its cmd_started for ``cmd_id``, from the journal."""
    (ev,) = journalled(
        jobs.stack.endpoint("broker_replay"), jobs.stack.security(), f"cmd.{job_id}.{cmd_id}", P.CmdStarted
    )
    return ev.epoch, ev.seq


def release(fifo: Path) -> None:
    with open(fifo, "w") as f:
        f.write("go\n")


def forge(stack: Stack, *events: P.EventBase) -> None:
    """Publish ``events`` from the forger's process, under its own key; returns once the broker
    has forwarded them all."""
    stack.security(FORGER, roles.AGENT)  # its key pair, authorized as an agent (under its own name)
    plan = stack.tmp / f"forgery-{len(list(stack.tmp.glob('forgery-*')))}.msgpack"
    plan.write_bytes(msgspec.msgpack.encode({"config": str(stack.config_file()), "key": FORGER, "events": events}))
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.event_forger", str(plan)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def orch_counters(jobs: JobStack) -> dict[str, int]:
    with jobs.orch() as oc:
        return oc.stats()


def wait_counted(jobs: JobStack, **at_least: int) -> dict[str, int]:
    """Until the orchestrator has counted (dropped) at least this many of each kind."""

    def counted() -> dict[str, int] | None:
        c = orch_counters(jobs)
        return c if all(c[k] >= n for k, n in at_least.items()) else None

    return wait_for(counted, 30, f"the orchestrator to count {at_least}", interval=0.1)


def _stamp(topic: str, source: str, epoch: str, seq: int) -> dict[str, Any]:
    """The envelope a forger chooses freely: any source, epoch and seq."""
    return {"topic": topic, "source": source, "epoch": epoch, "seq": seq, "ts": time.time()}


def forged_done(
    job_id: str, cmd_id: str, source: str, epoch: str, seq: int, exit_code: int = 0, **status: Any
) -> P.CmdDone:
    st = P.CmdStatus(cmd_id=cmd_id, job_id=job_id, agent=source, state="done", exit_code=exit_code, **status)
    return P.CmdDone(**_stamp(topics.cmd(job_id, cmd_id), source, epoch, seq), job_id=job_id, cmd_id=cmd_id, status=st)


def forged_chunk(job_id: str, cmd_id: str, source: str, epoch: str, seq: int, offset: int) -> P.LogChunk:
    return P.LogChunk(
        **_stamp(topics.log(job_id, cmd_id), source, epoch, seq),
        job_id=job_id,
        cmd_id=cmd_id,
        stream=P.STDOUT,
        offset=offset,
        data=b"FORGED OUTPUT\n",
    )


def test_a_forged_cmd_done_does_not_pass_a_failing_pre_submit_hook(hook_stack: HookStack) -> None:
    jobs, fifo = hook_stack(1)
    job_id = jobs.submit("ws1")
    hook = running_hook(jobs, job_id)
    epoch, seq = agent_stamp(jobs, job_id, hook.cmd_id)
    forge(
        jobs.stack,
        # In the agent's name, with the very stamp its real cmd_done will carry.
        forged_done(job_id, hook.cmd_id, hook.agent, epoch, seq + 1, stdout=b"all good\n"),
        # In the forger's own name: honest about who it is, but not the hook's agent.
        forged_done(job_id, hook.cmd_id, FORGER, "forger-epoch", 1, stdout=b"all good\n"),
    )
    wait_counted(jobs, forged_events=1, wrong_agent_events=1)
    with jobs.orch() as oc:
        view = oc.job(job_id)
    assert (view.state, view.stage) == ("RUNNING", "PRE_SUBMIT")  # the job did not move on
    release(fifo)
    view = jobs.wait_state(job_id)
    assert view.state == "FAILED", view
    assert "pre-submit command" in view.reason and "exited 1" in view.reason
    assert view.submitted_change is None
    assert not [argv for argv in jobs.executions("ws1") if argv.startswith("submit")]


def test_a_forged_huge_seq_in_an_agents_name_does_not_blind_the_orchestrator(hook_stack: HookStack) -> None:
    jobs, fifo = hook_stack(0)
    job_id = jobs.submit("ws1")
    hook = running_hook(jobs, job_id)
    epoch, _seq = agent_stamp(jobs, job_id, hook.cmd_id)
    # The agent's source and epoch, seq 10**15, for a command nobody runs.
    forge(jobs.stack, forged_done(job_id, "c-forged", hook.agent, epoch, 10**15))
    wait_counted(jobs, forged_events=1)
    release(fifo)
    view = jobs.wait_state(job_id)
    assert view.state == "DONE" and view.submitted_change, view
    # Every real event after the forgery was acted on as it came: none was taken for a duplicate
    # (the attack made them all duplicates, and only slow reconciling finished the job).
    c = orch_counters(jobs)
    assert (c["forged_events"], c["duplicate_events"]) == (1, 0), c


class LineReader:
    """A child's stdout read line by line in a thread (so its pipe never fills), stderr at the end."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.lines: list[bytes] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(b"")  # end of output
            self.cond.notify_all()

    def wait_line(self, match: Callable[[bytes], bool], timeout: float = 60) -> bytes:
        with self.cond:
            found = self.cond.wait_for(lambda: any(map(match, self.lines)) or b"" in self.lines, timeout)
            line = next((line for line in self.lines if match(line)), None)
        if not (found and line is not None):
            # Ended without it: what it said on stderr is why.
            said = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else b""
            raise AssertionError(f"no such line in {b''.join(self.lines)!r} (stderr: {said!r})")
        return line

    def finish(self) -> tuple[bytes, bytes]:
        """All of stdout and stderr, once the child has exited."""
        self.thread.join(10)
        assert self.proc.stderr is not None
        return b"".join(self.lines), self.proc.stderr.read()


def test_forged_events_do_not_crash_submit_follow_or_tail(hook_stack: HookStack) -> None:
    jobs, fifo = hook_stack(0)
    stack = jobs.stack
    info = jobs.seeds["ws1"]
    cli = [sys.executable, "-m", "p4bus", "--config", str(stack.config_file())]
    env = {**os.environ, **jobs.env}
    follow = subprocess.Popen(
        # --log: the byte-exact output, which the forged chunks and end must not cut or fill.
        [*cli, "submit", "--workspace", "ws1", "--source", info["source"], "--target", info["target"], "--follow"]
        + ["--log"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader = LineReader(follow)
    try:
        job_id = reader.wait_line(lambda line: line.startswith(b"INT-")).decode().strip()  # submit prints it first
        reader.wait_line(lambda line: line == b"hook-waiting\n")  # following live: it printed the hook's output
        hook = running_hook(jobs, job_id)
        epoch, seq = agent_stamp(jobs, job_id, hook.cmd_id)
        big = 10**9
        forgeries: list[P.EventBase] = []
        for source, ep, n in ((hook.agent, epoch, seq + 5), (FORGER, "forger-epoch", 1)):
            forgeries += [
                forged_chunk(job_id, hook.cmd_id, source, ep, n, offset=big),
                forged_done(job_id, hook.cmd_id, source, ep, n + 1, stdout_bytes=big, stdout=b"FORGED OUTPUT\n"),
                P.JobChanged(
                    topic=f"job.{job_id}",
                    source=source,
                    epoch=ep,
                    seq=n,
                    ts=time.time(),
                    job_id=job_id,
                    state="FAILED",
                    stage="FORGED",
                ),
            ]
        # Once the broker has forwarded them, they are in the CLI's queue ahead of anything the
        # hook does after its release.
        forge(stack, *forgeries)
        release(fifo)
        follow.wait(60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    out, err = reader.finish()
    assert follow.returncode == 0, (out, err)
    assert b"Traceback" not in err, err
    assert_shown_whole_and_forger_named(out)
    # The forged events are in the journal: a later tail replays them too.
    tail = subprocess.run([*cli, "tail", job_id], cwd=REPO, env=env, capture_output=True, timeout=60)
    assert tail.returncode == 0, tail
    assert b"Traceback" not in tail.stderr
    assert_shown_whole_and_forger_named(tail.stdout)


def assert_shown_whole_and_forger_named(out: bytes) -> None:
    assert b"FORGED" not in out and b"incomplete" not in out, out
    # Who tried is said once, in a note of its own (all the forged events came from one key).
    notes = re.findall(rb"\n[^\n]* ignoring [^\n]* published by key forger[^\n]*", out)
    assert len(notes) == 1, out
    # The hook's real output, whole: the forged chunk and end did not cut it off.
    assert b"hook-waiting\nstderr| hook: 3 problems\n" in out.replace(notes[0], b""), out


def test_forged_events_do_not_end_or_fill_p4bus_run(bus: tuple[Stack, MasterClient], tmp_path: Path) -> None:
    """`p4bus run` follows one command: only its agent's events for it count."""
    stack, _mc = bus
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    cli = [sys.executable, "-m", "p4bus", "--config", str(stack.config_file())]
    script = f"echo real-start; read line < {fifo}; echo real-end"
    run = subprocess.Popen(
        [*cli, "run", "--agent", "a1", "--cwd", str(tmp_path), "--", "sh", "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader = LineReader(run)
    try:
        reader.wait_line(lambda line: line == b"real-start\n")  # it follows the command live
        replay = stack.endpoint("broker_replay")
        (started,) = [e for e in journalled(replay, stack.security(), "cmd.-.", P.CmdStarted) if e.argv[:1] == ["sh"]]
        forgeries: list[P.EventBase] = []
        for source, ep, n in (("a1", started.epoch, started.seq + 5), (FORGER, "forger-epoch", 1)):
            forgeries += [
                forged_chunk("", started.cmd_id, source, ep, n, offset=10**9),
                forged_done("", started.cmd_id, source, ep, n + 1, exit_code=7, stdout_bytes=10**9),
            ]
        forge(stack, *forgeries)
        release(fifo)
        run.wait(60)
    finally:
        if run.poll() is None:
            release_if_waiting(fifo)
            run.kill()
            run.wait()
    out, err = reader.finish()
    assert (run.returncode, out) == (0, b"real-start\nreal-end\n"), err
    assert b"Traceback" not in err, err
