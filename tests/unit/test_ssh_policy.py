"""SSH destinations and the lexical policy for remote paths (agent/ssh_policy.py)."""

from __future__ import annotations

import pytest

from agent.policy import Refusal
from agent.ssh_policy import check
from common.config import AgentConf, AgentWorkspace, ConfigError
from common.protocol import CmdSpec
from common.ssh import SshDest


def test_destinations() -> None:
    assert SshDest.parse("ssh://bob@ws-7:2222") == SshDest("ws-7", "bob", 2222)
    assert SshDest.parse("ws-7") == SshDest("ws-7")
    assert SshDest.parse("bob@ws-7").options() == ["-o", "User=bob"]
    assert str(SshDest.parse("ssh://[::1]:22")) == "ssh://[::1]:22"
    for bad in ("http://ws-7", "ssh://ws-7/path", "ssh://ws-7:x", "ssh://"):
        with pytest.raises(ConfigError):
            SshDest.parse(bad)


def test_remote_policy_is_lexical() -> None:
    conf = AgentConf(
        workspace_roots=["/work/p4"],
        workspaces={"ws": AgentWorkspace(root="/work/p4/ws", p4user="bob")},
        allowed_executables=["p4", "/opt/bin/hook"],
    )
    launch = check(conf, CmdSpec(argv=["p4", "sync"], cwd="a/../b", env={"P4USER": "bob", "TZ": "UTC"}), "ws")
    env = {"P4USER": "bob", "TZ": "UTC", "PWD": "/work/p4/ws/b"}
    assert (launch.cwd, launch.env, launch.roots) == ("/work/p4/ws/b", env, ["/work/p4", "/work/p4/ws"])
    assert check(conf, CmdSpec(argv=["../../../opt/bin/hook"]), "ws").argv[0] == "../../../opt/bin/hook"
    refused = {
        "outside the workspace roots": CmdSpec(argv=["p4"], cwd="../../.."),
        "not on this agent's allowed_executables": CmdSpec(argv=["/usr/bin/p4"]),
        "cannot be run remotely": CmdSpec(argv=["A=b"]),
        "P4USER='eve' differs": CmdSpec(argv=["p4"], cwd="ws", env={"P4USER": "eve"}),
        "reads arguments from a file": CmdSpec(argv=["p4", "-x", "/etc/shadow", "fstat"]),
        "not on this agent's env_allowlist": CmdSpec(argv=["p4"], env={"LD_PRELOAD": "x"}),
    }
    for why, spec in refused.items():
        with pytest.raises(Refusal, match=why):
            check(conf, spec, None)
    with pytest.raises(Refusal, match="must be an absolute path"):
        check(AgentConf(workspace_roots=["~/p4"]), CmdSpec(argv=["p4"]), None)
