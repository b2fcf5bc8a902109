import os
from pathlib import Path

import pytest

from agent import policy
from common.config import AgentConf
from common.protocol import CmdSpec


def conf(tmp_path: Path, **kw) -> AgentConf:
    kw.setdefault("workspace_roots", [str(tmp_path / "root")])
    (tmp_path / "root" / "sub").mkdir(parents=True, exist_ok=True)
    return AgentConf(**kw)


def test_default_cwd_is_the_first_root_and_relative_cwd_resolves_inside(tmp_path: Path) -> None:
    c = conf(tmp_path, allowed_executables=["true"])
    root = os.path.realpath(tmp_path / "root")
    assert policy.check(c, CmdSpec(argv=["true"]), None, {}).cwd == root
    assert policy.check(c, CmdSpec(argv=["true"], cwd="sub"), None, {}).cwd == f"{root}/sub"


def test_named_workspace_root_is_the_default_cwd(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    c = conf(tmp_path, workspaces={"w": str(tmp_path / "ws")}, allowed_executables=["*"])
    assert policy.check(c, CmdSpec(argv=["x"]), "w", {}).cwd == os.path.realpath(tmp_path / "ws")


@pytest.mark.parametrize("cwd", ["/", "..", "../../etc", "sub/../../"])
def test_cwd_outside_the_roots_is_refused(tmp_path: Path, cwd: str) -> None:
    with pytest.raises(policy.Refusal, match="outside the workspace roots"):
        policy.check(conf(tmp_path, allowed_executables=["*"]), CmdSpec(argv=["true"], cwd=cwd), None, {})


def test_symlink_escaping_a_root_is_refused(tmp_path: Path) -> None:
    c = conf(tmp_path, allowed_executables=["*"])
    (tmp_path / "root" / "link").symlink_to("/etc")
    with pytest.raises(policy.Refusal, match="outside"):
        policy.check(c, CmdSpec(argv=["true"], cwd="link"), None, {})


def test_prefix_sibling_is_not_inside(tmp_path: Path) -> None:
    (tmp_path / "root2").mkdir()
    with pytest.raises(policy.Refusal, match="outside"):
        policy.check(
            conf(tmp_path, allowed_executables=["*"]), CmdSpec(argv=["x"], cwd=str(tmp_path / "root2")), None, {}
        )


def test_no_roots_is_a_refusal() -> None:
    with pytest.raises(policy.Refusal, match="no workspace roots"):
        policy.check(AgentConf(allowed_executables=["*"]), CmdSpec(argv=["true"]), None, {})


def test_environment_is_base_plus_allowlisted_overlay(tmp_path: Path) -> None:
    c = conf(tmp_path, allowed_executables=["*"], env_allowlist=["TZ"])
    agent_env = {"PATH": "/bin", "HOME": "/h", "SECRET": "x", "LANG": "C"}
    env = policy.check(c, CmdSpec(argv=["x"], env={"TZ": "UTC"}), None, agent_env).env
    root = os.path.realpath(tmp_path / "root")
    assert env == {"PATH": "/bin", "HOME": "/h", "LANG": "C", "TZ": "UTC", "PWD": root}
    with pytest.raises(policy.Refusal, match="LD_PRELOAD, ZZ not on"):
        policy.check(c, CmdSpec(argv=["x"], env={"ZZ": "1", "LD_PRELOAD": "x", "TZ": "b"}), None, agent_env)


def test_executable_allowlist(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "hook"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    c = conf(tmp_path, allowed_executables=["p4", str(tool)])
    env = {"PATH": f"{tool.parent}:/usr/bin:/bin"}
    policy.check(c, CmdSpec(argv=["p4"]), None, env)  # a bare name matches a bare name
    policy.check(c, CmdSpec(argv=[str(tool)]), None, env)  # an absolute entry matches the file
    policy.check(c, CmdSpec(argv=["hook"]), None, env)  # ... also when found via PATH
    for argv0 in ("sh", "/usr/bin/p4", "./p4"):
        with pytest.raises(policy.Refusal, match="allowed_executables"):
            policy.check(c, CmdSpec(argv=[argv0]), None, env)
