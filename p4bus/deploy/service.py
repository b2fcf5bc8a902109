"""Starting and stopping the deployed agent: ``agentctl`` in its remote dir, and the systemd
user unit it installs where ``systemctl --user`` works. Both are rendered from the templates in
ops/deploy/ (their one source), which the p4bus package ships as data (pyproject.toml)."""

from __future__ import annotations

import re
from importlib import resources

from p4bus.deploy.host import Remote

TEMPLATES = resources.files("p4bus") / "ops" / "deploy"
# agentctl stop: TERM, then KILL after this long (and `--remove` waits as long for the master).
STOP_WAIT_S = 15.0


def render(name: str, **values: str) -> str:
    """The template ``name`` with each ``@KEY@`` replaced by ``values[KEY]``; all must be given."""
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise ValueError(f"template {name} has placeholders without a value: {', '.join(left)}")
    return text


def unit_name(agent_id: str) -> str:
    return f"p4bus-agent-{agent_id}.service"


def agentctl(remote_dir: str, agent_id: str, systemd: bool) -> str:
    """The host's start/stop script; the start mode is chosen once, at deploy time."""
    return render(
        "agentctl",
        AGENT_ID=agent_id,
        REMOTE_DIR=remote_dir,
        MODE="systemd" if systemd else "supervised",
        STOP_WAIT_TENTHS=str(int(STOP_WAIT_S * 10)),
    )


def user_unit(remote_dir: str, agent_id: str) -> str:
    return render("p4bus-agent.service", AGENT_ID=agent_id, REMOTE_DIR=remote_dir)


def stop(remote: Remote, rdir: str, what: str) -> None:
    """Stop the agent of ``rdir`` if one was deployed there."""
    remote.sh(f"[ ! -x {rdir}/agentctl ] || {rdir}/agentctl stop", what)


def start(remote: Remote, rdir: str, agent_id: str, systemd: bool) -> None:
    if systemd:
        remote.write(f"{rdir}/{unit_name(agent_id)}", user_unit(rdir, agent_id), "644", "writing the systemd unit")
    remote.write(f"{rdir}/agentctl", agentctl(rdir, agent_id, systemd), "755", "writing agentctl")
    remote.sh(f"{rdir}/agentctl start", "starting the agent")
