"""Fixtures shared by the integration tests: a broker, a master and one agent on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.rpc import MasterClient, RequestError
from tests.conftest import Stack, wait_for


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
    mc = MasterClient([stack.endpoint("master_clients")], timeout=5.0)
    wait_for(lambda: agent_ids(mc) == ["a1"], 20, "the agent to register")
    yield stack, mc
    mc.close()
