"""The master's view: whether the deployed agent has registered (as a new process) or is gone."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from common import protocol as P
from common.auth import Security
from common.config import PORT_OFFSETS
from common.rpc import MasterClient, RequestError
from p4bus.deploy import DeployError

POLL_S = 0.2


def clients_endpoint(master_agents: str) -> str:
    """The client endpoint next to a master's agent endpoint (the default port layout)."""
    parts = urlsplit(master_agents.replace("tcp://", "http://", 1))
    if not parts.hostname or not parts.port:
        raise DeployError(f"cannot derive the master's client endpoint from {master_agents!r}; pass --master-clients")
    offset = PORT_OFFSETS["master_clients"] - PORT_OFFSETS["master_agents"]
    return f"tcp://{parts.hostname}:{parts.port + offset}"


def check_master(endpoint: str, security: Security | None) -> None:
    """Fail before touching the host if the master cannot confirm a registration from here."""
    with MasterClient([endpoint], security, timeout=3.0) as mc:
        try:
            mc.ping()
        except RequestError as exc:
            raise DeployError(
                f"the master's client endpoint {endpoint} does not answer from here "
                f"({exc.message}); start the master or pass --master-clients"
            ) from None


def registered(endpoint: str, security: Security | None, agent_id: str) -> P.AgentInfo | None:
    with MasterClient([endpoint], security, timeout=3.0) as mc:
        return _registered(mc, agent_id)


def _registered(mc: MasterClient, agent_id: str) -> P.AgentInfo | None:
    return next((a for a in mc.agents() if a.agent_id == agent_id and a.alive), None)


def wait_registered(
    endpoint: str, security: Security | None, agent_id: str, old_epoch: str, timeout: float
) -> P.AgentInfo | None:
    """The agent once a process of it other than ``old_epoch`` is registered; None at the deadline."""
    deadline = time.monotonic() + timeout
    with MasterClient([endpoint], security, timeout=2.0) as mc:
        while time.monotonic() < deadline:
            try:
                info = _registered(mc, agent_id)
                if info is not None and info.epoch != old_epoch:
                    return info
            except RequestError:
                pass  # a master restarting: keep asking until the deadline
            time.sleep(POLL_S)
    return None


def wait_dropped(endpoint: str, security: Security | None, agent_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with MasterClient([endpoint], security, timeout=2.0) as mc:
        while time.monotonic() < deadline:
            try:
                if _registered(mc, agent_id) is None:
                    return True
            except RequestError:
                pass
            time.sleep(POLL_S)
    return False
