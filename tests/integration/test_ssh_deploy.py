"""`p4bus deploy-agent` to this machine through the fixture sshd, into a temporary remote dir,
against a real broker and master: register, run, upgrade, remove, and the one-line failures."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from ssh_support import processes_with

from common import keys
from common import protocol as P
from common.rpc import MasterClient
from p4bus.deploy.host import Host
from p4bus.deploy.wheelhouse import build as build_wheelhouse
from tests.conftest import REPO, Stack, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """Built once per session with deploy-agent's own builder (about 10 s with a warm pip cache)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    here = Host(
        home="",
        node="",
        systemd=False,
        python=sys.executable,
        version=sys.version_info[:3],
        machine=platform.machine(),
        venv=True,
    )
    t0 = time.monotonic()
    wheels = build_wheelhouse(out, here)
    print(f"\nwheelhouse: {len(wheels)} wheels in {time.monotonic() - t0:.1f}s")
    assert any(w.name.startswith("p4bus-") for w in wheels)
    return out


def test_the_p4bus_wheel_carries_the_deploy_templates(wheelhouse: Path) -> None:
    (ours,) = wheelhouse.glob("p4bus-*.whl")
    names = set(zipfile.ZipFile(ours).namelist())
    assert {"p4bus/ops/deploy/agentctl", "p4bus/ops/deploy/p4bus-agent.service"} <= names


@pytest.fixture
def remote(stack: Stack):
    """The deploy's remote dir; an agent a failed test left running there is stopped."""
    path = stack.tmp / "remote"
    yield path
    if (path / "agentctl").exists():
        subprocess.run([str(path / "agentctl"), "stop"], timeout=30)


def p4bus(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P4BUS_")}
    return subprocess.run(
        [sys.executable, "-m", "p4bus", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


def ssh_args(sshd) -> list[str]:
    return [a for opt in sshd.options() for a in ("--ssh-option", opt)]


def deploy_args(stack: Stack, sshd, wheelhouse: Path, remote: Path, *extra: str) -> list[str]:
    (stack.tmp / "ws").mkdir(exist_ok=True)
    return [
        *bus_config(stack),
        "deploy-agent",
        sshd.url(),
        "--master",
        stack.endpoint("master_agents"),
        "--broker",
        stack.endpoint("broker_xsub"),
        "--workspace-root",
        str(stack.tmp / "ws"),
        "--allow",
        "sh",
        "--remote-dir",
        str(remote),
        "--wheelhouse",
        str(wheelhouse),
        *ssh_args(sshd),
        *extra,
    ]


def bus_config(stack: Stack) -> list[str]:
    """The bus's settings for the deploying CLI: its operator key and the keyring to authorize in."""
    return ["--config", str(stack.config_file())]


def agent_processes(remote: Path) -> list[str]:
    """The agents, not their keeper factories and waiting keepers (forks with the same command
    line whose parent is one of them, agent/keeper.py)."""
    found = processes_with(f"{remote}/agent.toml")
    pids = {line.split()[0] for line in found}

    def forked_by_one(line: str) -> bool:
        try:
            stat = Path(f"/proc/{line.split()[0]}/stat").read_text()
        except OSError:
            return True  # gone meanwhile: not a running agent
        return stat[stat.rindex(")") + 2 :].split()[1] in pids  # its parent is one of them

    return [line for line in found if not forked_by_one(line)]


def run_on(mc: MasterClient, agent: str, argv: list[str]) -> P.CmdStatus:
    reply = mc.exec(P.CmdSpec(argv=argv), agent=agent)
    return wait_for(
        lambda: next((s for s in mc.query([reply.cmd_id], agent=agent) if s.state == "done"), None),
        10,
        "the command to finish",
    )


def test_deploy_run_upgrade_remove(stack: Stack, sshd, wheelhouse: Path, remote: Path) -> None:
    stack.start("broker")
    stack.start("master")
    args = deploy_args(stack, sshd, wheelhouse, remote, "--agent-id", "deployed-1")
    t0 = time.monotonic()
    first = p4bus(*args)
    assert (first.returncode, first.stdout) == (0, "deployed-1\n"), first.stderr
    print(f"\nfirst deploy {time.monotonic() - t0:.1f}s: {first.stderr.strip()}")
    assert oct((remote / "agent.toml").stat().st_mode & 0o777) == "0o600"
    # The agent's key was made on the host; the bus authorized its public half under its id and
    # the host got the broker's and master's public keys to pin.
    host_keys = remote / "state" / "keys"
    assert oct((host_keys / "deployed-1.key_secret").stat().st_mode & 0o777) == "0o600"
    bus_ring = keys.read(stack.config().keyring_path)
    assert bus_ring["deployed-1"].role == "agent"
    assert bus_ring["deployed-1"].public == keys.load_public(host_keys / "deployed-1.key")
    assert not (stack.config().keys_path / "deployed-1.key_secret").exists()
    assert keys.read(host_keys / "keyring.toml") == {n: bus_ring[n] for n in ("broker", "master")}
    # The deploy templates are package data: the deployed agent's own install has them too.
    installed = remote.glob("venv/lib/python3*/site-packages/p4bus/ops/deploy")
    assert [sorted(p.name for p in d.iterdir()) for d in installed] == [["agentctl", "p4bus-agent.service"]]
    with MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5) as mc:
        status = run_on(mc, "deployed-1", ["sh", "-c", "echo hello from $0", "the deployed agent"])
        assert (status.exit_code, status.stdout) == (0, b"hello from the deployed agent\n")
        epoch = next(a.epoch for a in mc.agents() if a.agent_id == "deployed-1")
        old = agent_processes(remote)
        assert len(old) == 1

        t0 = time.monotonic()
        again = p4bus(*args)
        assert (again.returncode, again.stdout) == (0, "deployed-1\n"), again.stderr
        print(f"upgrade {time.monotonic() - t0:.1f}s")
        assert "stopped agent deployed-1 (upgrade)" in again.stderr
        assert keys.read(stack.config().keyring_path)["deployed-1"] == bus_ring["deployed-1"]  # the same key
        now = agent_processes(remote)
        assert len(now) == 1 and now != old
        assert next(a.epoch for a in mc.agents() if a.agent_id == "deployed-1") != epoch
        assert run_on(mc, "deployed-1", ["sh", "-c", "exit 3"]).exit_code == 3

        gone = p4bus(
            *bus_config(stack),
            "deploy-agent",
            "--remove",
            sshd.url(),
            "--remote-dir",
            str(remote),
            "--master-clients",
            stack.endpoint("master_clients"),
            *ssh_args(sshd),
        )
        assert gone.returncode == 0, gone.stderr
        assert "removed agent deployed-1" in gone.stderr
        assert not remote.exists() and not agent_processes(remote)
        assert "deployed-1" not in [a.agent_id for a in mc.agents()]


def test_failures_are_one_precise_line(stack: Stack, sshd, wheelhouse: Path, remote: Path, tmp_path: Path) -> None:
    stack.start("broker")
    stack.start("master")

    def fails(*args: str) -> str:
        done = p4bus(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and lines and lines[-1].startswith("p4bus: "), done.stderr
        return lines[-1]

    wrong_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    # ssh offers every IdentityFile it is given: leave the fixture's key out.
    line = fails(
        *bus_config(stack),
        "deploy-agent",
        sshd.url(),
        "--master",
        stack.endpoint("master_agents"),
        "--broker",
        "tcp://x:1",
        "--workspace-root",
        "/tmp",
        "--ssh-option",
        f"IdentityFile={wrong_key}",
        *[a for o in sshd.options() if not o.startswith("IdentityFile=") for a in ("--ssh-option", o)],
    )
    assert "failed: " in line and "Permission denied" in line, line

    old_python = tmp_path / "python3.9"
    old_python.write_text("#!/bin/sh\necho version=3.9.2; echo machine=x86_64; echo venv=yes\n")
    old_python.chmod(0o755)
    line = fails(*deploy_args(stack, sshd, wheelhouse, remote), "--python", str(old_python))
    assert f"has {old_python} 3.9.2" in line and "needs >= 3.11" in line, line

    line = fails(*deploy_args(stack, sshd, wheelhouse, remote), "--master-clients", "tcp://127.0.0.1:1")
    assert "tcp://127.0.0.1:1 does not answer from here" in line, line

    # The master answers here, but the agent is told an endpoint where nothing listens.
    unreachable = deploy_args(stack, sshd, wheelhouse, remote, "--agent-id", "lonely", "--timeout", "3")
    unreachable[unreachable.index("--master") + 1] = "tcp://127.0.0.1:1"
    line = fails(*unreachable, "--master-clients", stack.endpoint("master_clients"))
    assert "did not register" in line and "can reach tcp://127.0.0.1:1" in line, line
    # Another host (another remote dir) under the same id makes its own key: refused, one line.
    twin = deploy_args(stack, sshd, wheelhouse, stack.tmp / "twin", "--agent-id", "lonely", "--timeout", "3")
    line = fails(*twin)
    assert "lonely is already authorized" in line and "revoke lonely" in line, line
    assert not (stack.tmp / "twin" / "agentctl").exists() and not agent_processes(stack.tmp / "twin")
    removed = p4bus(
        *bus_config(stack), "deploy-agent", "--remove", sshd.url(), "--remote-dir", str(remote), *ssh_args(sshd)
    )
    assert removed.returncode == 0
    assert not agent_processes(remote)
