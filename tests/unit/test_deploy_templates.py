"""deploy-agent's packaged templates and config, rendered and run as the host would run them.
The supervised mode runs for real in tests/integration/test_ssh_deploy.py; the systemd mode
here, against a recording stand-in for systemctl (no user systemd in a test container)."""

import os
import subprocess
from pathlib import Path

import pytest

from common.config import AgentWorkspace, load
from common.ssh import SshDest
from p4bus.deploy import DeployError, Plan, install, service

pytestmark = pytest.mark.timeout(30)


def test_both_agentctl_modes_render_completely_and_parse(tmp_path: Path) -> None:
    for systemd in (True, False):
        script = tmp_path / "agentctl"
        script.write_text(service.agentctl("/srv/agent", "ws-07", systemd))
        assert "@" not in script.read_text()
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_a_missing_value_is_refused() -> None:
    with pytest.raises(ValueError, match="@REMOTE_DIR@"):
        service.render("p4bus-agent.service", AGENT_ID="x")


def test_systemd_mode_installs_enables_and_removes_the_user_unit(tmp_path: Path) -> None:
    rdir, home, bin_dir = tmp_path / "agent", tmp_path / "home", tmp_path / "bin"
    for d in (rdir, home, bin_dir):
        d.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    unit = service.unit_name("ws-07")
    (rdir / unit).write_text(service.user_unit(str(rdir), "ws-07"))
    (rdir / "agentctl").write_text(service.agentctl(str(rdir), "ws-07", systemd=True))
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def agentctl(op: str) -> None:
        subprocess.run(["sh", str(rdir / "agentctl"), op], env=env, check=True, timeout=10)

    agentctl("start")
    installed = home / ".config/systemd/user" / unit
    assert f"ExecStart={rdir}/venv/bin/p4bus --config {rdir}/agent.toml agent\n" in installed.read_text()
    assert calls.read_text().splitlines() == ["--user daemon-reload", f"--user enable {unit}", f"--user restart {unit}"]
    calls.unlink()
    agentctl("stop")
    assert not installed.exists()
    assert calls.read_text().splitlines() == [f"--user disable --now {unit}", "--user daemon-reload"]


def test_agent_toml_is_a_config_the_agent_loads(tmp_path: Path) -> None:
    plan = Plan(
        dest=SshDest("ws-07"),
        masters=["tcp://bus-1:9090", "tcp://bus-2:9090"],
        broker="tcp://bus-1:9092",
        workspace_roots=['/work/p4 "quoted"'],
        pools=["linux"],
        slots=2,
    )
    path = tmp_path / "agent.toml"
    path.write_text(install.agent_toml(plan, "ws-07", "/srv/agent", insecure=False))
    cfg = load(path, environ={})
    assert cfg.state_dir == "/srv/agent/state" and not cfg.insecure
    assert (cfg.keys_path, cfg.keyring_path.name) == (Path("/srv/agent/state/keys"), "keyring.toml")
    a = cfg.agent
    assert (a.id, a.masters, a.broker, a.pools, a.slots) == ("ws-07", plan.masters, plan.broker, ["linux"], 2)
    assert (a.workspace_roots, a.allowed_executables) == (['/work/p4 "quoted"'], ["p4"])
    assert a.on_stop == "detach"  # an upgrade (deploy-agent again) restarts the agent, not its commands


def test_agent_toml_holds_the_workspace_tables_given_on_the_command_line(tmp_path: Path) -> None:
    given = ["ws1=/work/p4/ws1,p4port=ssl:p4:1666,p4user=build,p4client=ws1-build,tickets=/srv/t", "plain=/w2"]
    plan = Plan(
        dest=SshDest("h"),
        masters=["tcp://m:9090"],
        broker="tcp://m:9092",
        workspace_roots=[],
        workspaces=dict(install.workspace_table(w) for w in given),
    )
    path = tmp_path / "agent.toml"
    path.write_text(install.agent_toml(plan, "h", "/srv/agent", insecure=False))
    a = load(path, environ={}).agent
    assert a.workspace("ws1") == AgentWorkspace(
        root="/work/p4/ws1", p4port="ssl:p4:1666", p4user="build", p4client="ws1-build", tickets="/srv/t"
    )
    assert a.workspace("plain") == AgentWorkspace(root="/w2")
    for bad in ("ws1", "ws1=", "ws1=/r,p4port", "ws1=/r,p4prot=x"):
        with pytest.raises(DeployError, match=f"--workspace '{bad}'"):
            install.workspace_table(bad)
