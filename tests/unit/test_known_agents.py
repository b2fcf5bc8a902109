"""Agents and pools some master has seen: the registry remembers them, the orchestrator refuses
a submit for a name none has seen and accepts one it cannot check."""

from __future__ import annotations

import pytest

from common.protocol import AgentInfo
from master.registry import Registry
from orchestrator.known import KnownAgents, Listing

pytestmark = pytest.mark.timeout(10)

A1 = AgentInfo(agent_id="a1", pools=["linux"], workspaces=["ws1"], slots=2, epoch="e1")
A2 = AgentInfo(agent_id="a2", pools=["mac"], workspaces=["ws2"], epoch="e1")


def test_the_registry_remembers_agents_that_are_gone():
    r = Registry()
    r.register(b"i1", A1, 1.0, now=100)
    r.register(b"i2", A2, 1.0, now=100)
    r.heartbeat(r.agents["a2"], ["c9"], 0, now=105)
    r.expire(1.0, now=104.5)  # a1: silent past 3 heartbeats
    known = {info.agent_id: info for info in r.known()}
    assert set(r.agents) == {"a2"} and set(known) == {"a1", "a2"}
    assert (known["a1"].alive, known["a1"].pools, known["a1"].running) == (False, ["linux"], [])
    assert known["a2"].alive and known["a2"].running == ["c9"]


def test_a_known_name_is_accepted_without_asking():
    known = KnownAgents()
    known.saw([A1])

    def ask() -> list[list[AgentInfo] | None]:
        raise AssertionError("a known name needs no master")

    assert known.refusal("a1", None, ask) == ""
    assert known.refusal(None, "linux", ask) == ""
    assert known.refusal(None, None, ask) == ""


def test_an_unknown_name_is_asked_for_then_learned_or_refused():
    known = KnownAgents()
    asked: list[int] = []

    def ask() -> list[list[AgentInfo] | None]:
        asked.append(1)
        return [[A1], None, [A2]]  # one master down: the others still answer

    assert known.refusal("a2", None, ask) == "" and known.refusal(None, "mac", ask) == ""
    assert len(asked) == 1  # learned once, not asked again
    why = known.refusal("nosuch", None, ask)
    assert why == "no master has seen agent 'nosuch' (known: a1, a2): check the name, or start that agent first"
    assert known.refusal(None, "gpu", ask).startswith("no master has seen pool 'gpu' (known: linux, mac)")


def test_with_no_master_answering_a_job_is_accepted_to_wait():
    assert KnownAgents().refusal("a1", None, lambda: [None, None]) == ""


def test_a_listing_is_complete_when_every_master_has_answered_or_timed_out():
    listing = Listing(3)
    assert not listing.answer(2, [A2])
    assert not listing.answer(0, None)  # timed out
    assert listing.answer(1, [A1])
    assert listing.result() == [None, [A1], [A2]]
    known = KnownAgents()
    assert known.refusal("nosuch", None, listing.result).startswith("no master has seen agent 'nosuch'")
