"""The agent's key: made on the host (its secret never leaves it), authorized here as role
agent under the agent's id, and the servers' public keys installed there for it to pin."""

from __future__ import annotations

import shlex

from common import keys, roles
from common.auth import Security
from p4bus.deploy import DeployError
from p4bus.deploy.host import Remote

# The servers an agent connects to, whose keys it pins.
PINNED = (roles.BROKER, roles.MASTER)


def provision(remote: Remote, rdir: str, agent_id: str, security: Security) -> bool:
    """Give the agent in ``rdir`` its key pair (kept across upgrades) and its pins; returns
    True when its key was newly authorized in ``security``'s keyring."""
    p4bus = f"{rdir}/venv/bin/python -m p4bus --config {rdir}/agent.toml keys"
    name = shlex.quote(agent_id)
    public = remote.sh(
        f"{p4bus} show {name} 2>/dev/null || {p4bus} create {name}", "creating the agent's key pair"
    ).strip()
    ring = security.keyring.path
    known = keys.read(ring).get(agent_id)
    try:
        keys.authorize(ring, agent_id, roles.AGENT, public)
    except keys.KeyringError as exc:
        raise DeployError(f"cannot authorize the key made on the host: {exc}") from None
    pins = {n: e for n, e in keys.read(ring).items() if e.role in PINNED}
    missing = [r for r in PINNED if not any(e.role == r for e in pins.values())]
    if missing:
        raise DeployError(
            f"the keyring {ring} has no {' or '.join(missing)} key for the agent to pin (`p4bus keys init`)"
        )
    remote.write(f"{rdir}/state/keys/{keys.KEYRING_FILE}", keys.render(pins), "600", "installing the servers' keys")
    return known is None
