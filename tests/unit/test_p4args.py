"""The p4 command-line sandbox (agent/p4args.py) and the workspace's p4 environment (agent/policy.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import p4args, policy
from common.config import AgentConf, AgentWorkspace
from common.protocol import CmdSpec

ROOTS = ["/ws"]


def check(argv: list[str], stdin: bytes | None = None) -> None:
    p4args.check(argv, stdin, "/ws/a", ROOTS, os.path.normpath)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["p4", "-x", "/etc/shadow", "fstat"], "'-x' is not allowed on this agent: it reads arguments from a file"),
        (["p4", "-x/etc/shadow", "fstat"], "reads arguments from a file"),
        (["p4", "-s", "-x", "-", "fstat"], "reads arguments from a file"),
        (["p4", "-d", "/etc", "info"], "switches the directory"),
        (["p4", "-p", "evil:1666", "sync"], "switches the server"),
        (["p4", "-u", "admin", "sync"], "switches the user"),
        (["p4", "-c", "other", "sync"], "switches the client"),
        (["p4", "-P", "ticket", "sync"], "passes a password"),
        (["p4", "-H", "host", "sync"], "switches the host"),
        (["p4", "-C", "utf8", "sync"], "switches the character set"),
        (["p4", "-Q", "utf8", "sync"], "switches the character set"),
        (["p4", "-E", "P4PORT=x", "sync"], "sets a p4 variable"),
        (["p4", "-v", "net=5", "sync"], "debug output"),
        (["p4", "-zprog=x", "sync"], "only as -ztag"),
        (["p4", "--batchsize=1", "sync"], "'--batchsize=1' is not allowed on this agent (allowed: "),
        (["p4", "set", "P4CONFIG=.p4config"], "p4 set is not allowed"),
        (["p4", "tickets"], "prints the ticket values"),
        (["p4", "login", "-p"], "prints a ticket"),
        (["p4", "print", "-o", "/home/agent/.ssh/authorized_keys", "//depot/x"], "outside the workspace roots"),
        (["p4", "print", "-o../../etc/x", "//depot/x"], "outside the workspace roots"),
    ],
)
def test_refused_command_lines(argv: list[str], why: str) -> None:
    with pytest.raises(policy.Refusal) as exc:
        check(argv)
    assert why in str(exc.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["p4", "-ztag", "changes", "-m1", "-s", "submitted", "//depot/..."],
        ["p4", "-z", "tag", "opened", "-c", "5"],
        ["p4", "-s", "-q", "-G", "-I", "-r", "3", "info"],
        ["p4", "-r3", "sync"],
        ["p4", "integrate", "-c", "5", "-b", "br"],  # -c of a command is not the global -c
        ["p4", "changes", "-u", "bob", "-c", "ws"],
        ["p4", "login"],
        ["p4", "print", "-o", "out/file", "//depot/x"],
        ["p4"],
    ],
)
def test_allowed_command_lines(argv: list[str]) -> None:
    check(argv)


SPEC = b"Client:\tws\nOwner:\tbob\nRoot:\t%s\nAltRoots:\n\t%s\nView:\n\t//depot/... //ws/...\n"


def test_client_spec_roots_must_be_inside_the_workspace_roots() -> None:
    check(["p4", "client", "-i"], SPEC % (b"/ws/a", b"/ws/b"))
    check(["p4", "workspace", "-f", "-i"], SPEC % (b'"/ws/with space"', b"/ws"))
    for root, alt in ((b"/etc", b"/ws"), (b"/ws/a", b"/tmp/x"), (b"/ws/../etc", b"/ws"), (b"relative", b"/ws")):
        with pytest.raises(policy.Refusal, match="client -i spec Root"):
            check(["p4", "client", "-i"], SPEC % (root, alt))
    with pytest.raises(policy.Refusal, match="a spec with a Root: field"):
        check(["p4", "client", "-i"], b"Client:\tws\n")
    with pytest.raises(policy.Refusal, match="a spec with a Root: field"):
        check(["p4", "client", "-i"], None)
    with pytest.raises(policy.Refusal, match="marshalled spec"):
        check(["p4", "-G", "client", "-i"], SPEC % (b"/ws/a", b"/ws/b"))
    check(["p4", "client", "-o"])  # only -i takes a spec


def test_p4_is_recognised_by_argv0_or_the_resolved_file() -> None:
    assert p4args.is_p4("p4", None) and p4args.is_p4("/opt/perforce/bin/p4")
    assert p4args.is_p4("tool", "/usr/bin/p4") and p4args.is_p4("p4sim")
    assert not p4args.is_p4("sh", "/bin/dash")


# --------------------------------------------------------------------------- the p4 environment


def agent_conf(tmp_path: Path, **ws: str) -> AgentConf:
    root = tmp_path / "ws1"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    table = AgentWorkspace(root=str(root), **ws)
    return AgentConf(workspaces={"ws1": table, "plain": str(tmp_path)}, allowed_executables=["*"])


def test_the_workspace_p4_environment_comes_from_the_agent(tmp_path: Path) -> None:
    c = agent_conf(tmp_path, p4port="ssl:p4:1666", p4user="bob", p4client="ws1", tickets="/t")
    env = policy.check(c, CmdSpec(argv=["p4", "info"], cwd="sub"), "ws1", {"PATH": "/bin"}).env
    root = str(tmp_path / "ws1")
    assert env == {
        "PATH": "/bin",
        "P4PORT": "ssl:p4:1666",
        "P4USER": "bob",
        "P4CLIENT": "ws1",
        "P4TICKETS": "/t",
        "PWD": f"{root}/sub",
    }
    # The same values may be repeated (the orchestrator still sends them); the cwd names the workspace.
    same = {"P4PORT": "ssl:p4:1666", "P4USER": "bob", "PWD": f"{root}/sub/."}
    assert policy.check(c, CmdSpec(argv=["p4"], cwd=f"{root}/sub", env=same), None, {}).env["P4USER"] == "bob"


@pytest.mark.parametrize(
    ("var", "value", "why"),
    [
        ("PWD", "/etc", "environment variable PWD='/etc' differs from this agent's"),
        ("P4PORT", "evil:1666", "P4PORT='evil:1666' differs from this agent's 'p4:1666' (from [agent.workspaces.ws1])"),
        ("P4USER", "admin", "P4USER='admin' differs"),
        ("P4CLIENT", "other", "P4CLIENT='other' differs"),
        ("P4TICKETS", "/etc/shadow", "P4TICKETS may not be set by a request"),
        ("P4CONFIG", ".p4config", "P4CONFIG may not be set by a request"),
        ("P4TRUST", "/tmp/trust", "P4TRUST may not be set by a request"),
    ],
)
def test_a_request_cannot_change_the_p4_environment(tmp_path: Path, var: str, value: str, why: str) -> None:
    c = agent_conf(tmp_path, p4port="p4:1666", p4user="bob", p4client="ws1")
    with pytest.raises(policy.Refusal) as exc:
        policy.check(c, CmdSpec(argv=["p4", "info"], env={var: value}), "ws1", {})
    assert why in str(exc.value)


def test_outside_any_workspace_table_the_p4_variables_are_the_agents_alone(tmp_path: Path) -> None:
    c = agent_conf(tmp_path)
    with pytest.raises(policy.Refusal, match="P4PORT may not be set by a request"):
        policy.check(c, CmdSpec(argv=["p4", "info"], env={"P4PORT": "x:1"}), "plain", {})
    env = policy.check(c, CmdSpec(argv=["p4", "info"]), "plain", {}).env
    assert env["PWD"] == str(tmp_path) and "P4PORT" not in env


def test_p4_arguments_are_checked_for_a_p4_found_on_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "p4").write_text("#!/bin/sh\n")
    (bin_dir / "p4").chmod(0o755)
    (bin_dir / "tool").symlink_to(bin_dir / "p4")
    c = agent_conf(tmp_path)
    for argv0 in ("p4", "tool", str(bin_dir / "p4")):
        with pytest.raises(policy.Refusal, match="reads arguments from a file"):
            policy.check(c, CmdSpec(argv=[argv0, "-x", "/etc/shadow", "fstat"]), "ws1", {"PATH": str(bin_dir)})


@pytest.mark.parametrize(
    ("agent_file", "orch_file"), [("one-host", "one-host"), ("multi-host-agent", "multi-host-master")]
)
def test_the_shipped_examples_give_the_agent_what_the_orchestrator_sends(agent_file: str, orch_file: str) -> None:
    from common.config import load
    from orchestrator.pipeline.model import Workspace
    from orchestrator.pipeline.p4cmd import p4_env

    examples = Path(__file__).parents[2] / "ops" / "examples"
    agent = load(examples / f"{agent_file}.toml", environ={}).agent
    wc = load(examples / f"{orch_file}.toml", environ={}).orchestrator.workspaces["rel-main"]
    ws = Workspace(
        name="rel-main",
        p4port=wc.p4port,
        p4user=wc.p4user,
        p4client=wc.p4client,
        root=wc.root,
        tickets_file=wc.tickets_file,
    )
    held = ("rel-main", agent.workspace_tables()["rel-main"])
    fixed = policy.p4_env(held, wc.root)
    policy.check_p4_env(p4_env(ws), fixed, held, lambda a, b: a == b)  # no Refusal
    assert {k: v for k, v in p4_env(ws).items() if k in policy.P4_ENV} == fixed
