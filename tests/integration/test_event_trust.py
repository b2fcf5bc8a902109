"""Events are believed by who published them (the broker's third frame), not by what they say.

Issue 9 finding 4, reproduced and refused: a forged ``cmd_done`` for a pre-submit hook that was
going to fail; a forged event with an agent's source and epoch and seq 10**15; a forged event
while ``p4bus submit --follow`` and ``p4bus tail`` follow the job. The forger is a process of
its own holding a valid key (role agent, another id): tests/integration/event_forger.py.

The first tests drive a real orchestrator's event handling in-process (its own store and
sockets, no broker) with frames exactly as the broker delivers them, to pin down each rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common import config as cfgmod
from common import protocol as P
from common.sequence import Stamper
from common.zmqutil import free_port_base
from orchestrator.service import Orchestrator
from orchestrator.store import CmdState

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
        job_id, _effects = self.o.engine.submit(
            P.Submit(req_id="r", source="//depot/dev/...", target="//depot/main/...")
        )
        self.job_id = job_id
        (cmd,) = self.o.store.open_commands(job_id)
        self.cmd_id = cmd.cmd_id
        self.agents = {name: Stamper(name, f"epoch-{name}") for name in ("agent-1", "agent-2")}

    def close(self) -> None:
        for s in (self.o.api, self.o.sub, self.o.events.sock):
            s.close(linger=0)
        self.o.dispatcher.close()
        self.o.masters.close()
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
        self.o.on_dispatch_replies(
            [(self.cmd_id, P.ExecReply(req_id="x", cmd_id=self.cmd_id, agent=agent, status=status))]
        )

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
