"""Which events the orchestrator believes (orchestrator/trust.py), without sockets."""

from __future__ import annotations

import pytest

from common import protocol as P
from common.sequence import Stamper
from orchestrator.trust import EARLY_PER_PUBLISHER, EARLY_PUBLISHERS, EarlyEvents, claimed_agents, source_forged

pytestmark = pytest.mark.timeout(10)


def started(source: str, agent: str | None = None, cmd_id: str = "c1") -> P.CmdStarted:
    stamp = Stamper(source, "e1").stamp(f"cmd.J.{cmd_id}")
    return P.CmdStarted(**stamp, job_id="J", cmd_id=cmd_id, agent=agent or source, pid=1, argv=["p4"])


def done(source: str, status_agent: str = "", cmd_id: str = "c1") -> P.CmdDone:
    stamp = Stamper(source, "e1").stamp(f"cmd.J.{cmd_id}")
    return P.CmdDone(
        **stamp, job_id="J", cmd_id=cmd_id, status=P.CmdStatus(cmd_id=cmd_id, agent=status_agent, exit_code=0)
    )


def chunk(source: str) -> P.LogChunk:
    return P.LogChunk(**Stamper(source, "e1").stamp("log.J.c1"), job_id="J", cmd_id="c1", stream=1, offset=0, data=b"")


def agent_up(source: str) -> P.AgentUp:
    return P.AgentUp(**Stamper(source, "e1").stamp("agent.a1"), agent=P.AgentInfo(agent_id="a1"), master=source)


def test_an_agent_speaks_only_for_itself():
    assert not source_forged(started("agent-1"), "agent-1")
    assert not source_forged(done("agent-1", "agent-1"), "agent-1")
    assert not source_forged(done("agent-1"), "agent-1")  # status.agent left out
    assert not source_forged(chunk("agent-1"), "agent-1")
    # Another key writing agent-1's name anywhere in the body: forged.
    assert source_forged(started("agent-1"), "forger")
    assert source_forged(done("agent-1", "agent-1"), "forger")
    assert source_forged(chunk("agent-1"), "forger")
    # Its own source but another agent named inside: forged too (no key can be both).
    assert source_forged(started("forger", agent="agent-1"), "forger")
    assert source_forged(done("forger", "agent-1"), "forger")


def test_service_events_and_insecure_buses_are_not_judged_by_source():
    # A master's source is its service id, not its key name: agent.* events are hints.
    assert claimed_agents(agent_up("master-host")) is None
    assert not source_forged(agent_up("master-host"), "master")
    # No publisher (insecure bus): nothing to compare with.
    assert not source_forged(started("agent-1"), "")


def test_early_events_are_released_to_the_agent_the_reply_names_and_bounded():
    early = EarlyEvents()
    mine = [P.Delivered(started("agent-1"), "agent-1"), P.Delivered(done("agent-1"), "agent-1")]
    for got in mine:
        assert early.hold("c1", got)
    assert not early.hold("c1", P.Delivered(done("agent-1"), "agent-1"))  # a third from one key: noise
    assert EARLY_PER_PUBLISHER == 2
    for i in range(EARLY_PUBLISHERS - 1):
        assert early.hold("c1", P.Delivered(done(f"a{i}"), f"a{i}"))
    assert not early.hold("c1", P.Delivered(done("one-too-many"), "one-too-many"))
    assert early.release("c1", "agent-1") == (mine, EARLY_PUBLISHERS - 1)
    assert early.release("c1", "agent-1") == ([], 0)  # released once


def test_early_events_of_commands_no_longer_pending_are_forgotten():
    early = EarlyEvents()
    early.hold("c1", P.Delivered(started("agent-1"), "agent-1"))
    early.hold("c2", P.Delivered(started("agent-1", cmd_id="c2"), "agent-1"))
    assert early.forget(keep={"c2"}) == 1
    assert list(early.held) == ["c2"]
