"""`p4bus deploy-agent`: install, upgrade or remove an agent on a host that only SSH reaches.

One module per job, run in this order by flow.py:
- host.py: the SSH sessions and copies (one ControlMaster, common/ssh.py, so ~/.ssh/config, keys
  and agent forwarding apply and a refused login is reported once, at once) and what a probe
  learns of the host: it needs python3 >= 3.11 with venv and nothing else;
- wheelhouse.py: wheels of p4bus and its dependencies, built here for the host's Python and CPU;
- install.py: on the host, everything lives in the remote dir: wheels/ (copied), venv/ (installed
  with ``pip --no-index``), agent.toml (0600), state/ (the spool) and agent.log;
- service.py: ``agentctl`` there starts and stops the agent as a systemd user unit when
  ``systemctl --user`` works, else as a supervised background process (restart loop, pid file);
  script and unit are rendered from the templates in ops/deploy/, shipped as package data;
- agent_keys.py: the agent's key pair, made on the host (the secret never leaves it), authorized
  in the bus keyring as role agent under its id; the broker's and masters' public keys installed
  on the host for it to pin;
- registration.py: the master's word that the agent (a new process of it) has registered.

This package's own vocabulary (``Plan``, ``DeployError``) is here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.ssh import SshDest

# Progress lines for the person running the command.
Say = Callable[[str], None]


class DeployError(Exception):
    """One line naming what failed and what to fix."""


DEFAULT_REMOTE_DIR = "~/.p4bus-agent"


@dataclass
class Plan:
    """What to deploy where: the command line of `p4bus deploy-agent`."""

    dest: SshDest
    masters: list[str]
    broker: str
    workspace_roots: list[str]
    master_clients: str = ""
    # [agent.workspaces.NAME] tables: root and the workspace's p4 settings (agent/policy.py)
    workspaces: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # default: derived from the first master endpoint
    pools: list[str] = field(default_factory=lambda: ["default"])
    slots: int = 4
    agent_id: str = ""  # default: the host's short name, as the agent itself would choose
    allowed_executables: list[str] = field(default_factory=lambda: ["p4"])
    ssh_options: list[str] = field(default_factory=list)
    remote_dir: str = DEFAULT_REMOTE_DIR
    python: str = "python3"
    wheelhouse: Path | None = None  # prebuilt wheels; default: build them now
    register_timeout: float = 60.0
