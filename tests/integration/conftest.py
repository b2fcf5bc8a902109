"""Fixtures shared by the integration tests: a broker, a master and one agent on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest
import zmq

from broker.client import ReplayClient
from common import protocol as P
from common.auth import Security
from common.rpc import MasterClient, RequestError
from tests.conftest import Stack, wait_for

E = TypeVar("E", bound=P.EventBase)


def agent_ids(mc: MasterClient) -> list[str]:
    """The agents the master lists now; none while it does not answer (starting, restarting)."""
    try:
        return [a.agent_id for a in mc.agents()]
    except RequestError:
        return []


@pytest.fixture
def bus(stack: Stack) -> Iterator[tuple[Stack, MasterClient]]:
    stack.start("broker")
    stack.start("master")
    stack.start("agent", extra={"agent": {"id": "a1"}})
    mc = MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5.0)
    wait_for(lambda: agent_ids(mc) == ["a1"], 20, "the agent to register")
    # The agent's PUB connects to the broker on its own schedule, and PUB drops what it sends
    # while unconnected: probe until a probe's end is in the journal, so that a test waiting for
    # an event of its own never waits for one published before the connection existed.
    replay = stack.endpoint("broker_replay")

    def probe_journalled() -> bool:
        mc.exec(P.CmdSpec(argv=["true"], cwd=str(stack.tmp)), agent="a1")
        return bool(journalled(replay, stack.security(), "cmd.-.", P.CmdDone))

    wait_for(probe_journalled, 20, "the agent's events to reach the journal", interval=0.1)
    yield stack, mc
    mc.close()


def journalled(replay_endpoint: str, security: Security | None, prefix: str, kind: type[E]) -> list[E]:
    """The events of type ``kind`` under ``prefix`` in the broker's journal."""
    with ReplayClient(zmq.Context.instance(), replay_endpoint, security) as replay:
        events = (P.decode(body, P.Event) for page in replay.pages(prefix) for _id, _topic, body in page)
        return [ev for ev in events if isinstance(ev, kind)]
