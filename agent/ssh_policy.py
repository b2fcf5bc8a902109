"""agent/policy.py for commands that run on another host: the same rules, on remote paths.

The agent cannot look at the remote filesystem, so the checks here are lexical (``..`` is
collapsed, nothing is resolved) and the remote wrapper repeats the cwd check on the physical
path before it runs anything (agent/ssh_exec.py): a symlink inside a root pointing outside is
still caught there. Environment: the request's allowlisted overlay and the workspace's p4
environment (agent/policy.py: p4_env) are sent; PATH, HOME and LANG come from the remote login,
as they would for a person logging in there. p4 command lines are checked as locally
(agent/p4args.py), on the lexical paths.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from agent import p4args
from agent.errors import Refusal
from agent.policy import check_overlay, check_p4_env, held_workspace, inside, p4_env
from common.config import AgentConf
from common.protocol import CmdSpec


@dataclass(frozen=True)
class RemoteLaunch:
    argv: list[str]
    cwd: str
    env: dict[str, str]  # the overlay and the workspace's p4 environment
    roots: list[str]


def roots(conf: AgentConf) -> list[str]:
    out: list[str] = []
    for r in [*conf.workspace_roots, *(w.root for w in conf.workspace_tables().values())]:
        if not posixpath.isabs(r):
            raise Refusal(f"workspace root {r!r} must be an absolute path on the remote host (exec_via)")
        norm = posixpath.normpath(r)
        if norm not in out:
            out.append(norm)
    if not out:
        raise Refusal("this agent has no workspace roots configured (agent.workspace_roots / agent.workspaces)")
    return out


def resolve_cwd(conf: AgentConf, allowed: list[str], cwd: str | None, workspace: str | None) -> str:
    held = conf.workspace(workspace)
    base = posixpath.normpath(held.root) if held else allowed[0]
    path = posixpath.normpath(posixpath.join(base, cwd) if cwd else base)
    if not any(inside(path, r) for r in allowed):
        raise Refusal(f"cwd {cwd or path!r} resolves to {path}, outside the workspace roots {allowed}")
    return path


def check_executable(conf: AgentConf, argv0: str, cwd: str) -> None:
    """A bare name must be on the allowlist as is; a path must equal an absolute entry."""
    # env(1) starts the command remotely: it would take "A=b" for an assignment, "-x" for an option.
    if "=" in argv0 or argv0.startswith("-"):
        raise Refusal(f"executable {argv0!r} cannot be run remotely (no '=' or leading '-')")
    allowed = conf.allowed_executables
    if "*" in allowed or ("/" not in argv0 and argv0 in allowed):
        return
    if "/" in argv0:
        path = posixpath.normpath(posixpath.join(cwd, argv0))
        if any(posixpath.isabs(a) and posixpath.normpath(a) == path for a in allowed):
            return
    raise Refusal(f"executable {argv0!r} is not on this agent's allowed_executables {allowed}")


def check(conf: AgentConf, spec: CmdSpec, workspace: str | None) -> RemoteLaunch:
    allowed = roots(conf)
    cwd = resolve_cwd(conf, allowed, spec.cwd, workspace)
    check_overlay(conf, spec.env)
    held = held_workspace(conf, workspace, cwd, posixpath.normpath)
    fixed = p4_env(held, cwd)
    check_p4_env(spec.env, fixed, held, lambda a, b: posixpath.normpath(a) == posixpath.normpath(b))
    check_executable(conf, spec.argv[0], cwd)
    if p4args.is_p4(spec.argv[0]):
        p4args.check(spec.argv, spec.stdin, cwd, allowed, posixpath.normpath)
    return RemoteLaunch(argv=list(spec.argv), cwd=cwd, env={**spec.env, **fixed}, roots=allowed)
