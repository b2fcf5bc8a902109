"""What the agent agrees to run (DESIGN §5): allowlisted executables, cwd inside a configured
root, an allowlisted environment, the workspace's own p4 environment, and p4 command lines
that cannot leave the sandbox (agent/p4args.py). Pure functions of (config, request) so they
are unit-tested.

Every check runs before anything is written: a refused request leaves nothing on disk (the
session records the refusal in memory only, see agent/session.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent import p4args
from agent.errors import Refusal
from common.config import AgentConf, AgentWorkspace
from common.protocol import CmdSpec

__all__ = ["Launch", "Refusal", "check"]

# The only variables a child inherits from the agent; everything else must come from the
# request's env overlay and pass the allowlist.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# The p4 environment of a workspace: set by the agent from [agent.workspaces.NAME] (PWD: the
# command's directory), never by a request. A request may repeat a value, not change it.
P4_ENV = ("P4PORT", "P4USER", "P4CLIENT", "P4TICKETS", "P4TRUST", "P4CONFIG", "PWD")
_P4_FIELDS = {
    "P4PORT": "p4port",
    "P4USER": "p4user",
    "P4CLIENT": "p4client",
    "P4TICKETS": "tickets",
    "P4TRUST": "trust",
}


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    executable: str | None = None  # the file argv[0] resolved to, which was checked


def roots(conf: AgentConf) -> list[str]:
    """Every directory a command may run in (workspace roots first, then named workspaces)."""
    out: list[str] = []
    for r in [*conf.workspace_roots, *(w.root for w in conf.workspace_tables().values())]:
        real = os.path.realpath(os.path.expanduser(r))
        if real not in out:
            out.append(real)
    return out


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_cwd(conf: AgentConf, cwd: str | None, workspace: str | None) -> tuple[str, str]:
    """(the directory as named, for PWD; the same resolved, to run in)."""
    allowed = roots(conf)
    if not allowed:
        raise Refusal("this agent has no workspace roots configured (agent.workspace_roots / agent.workspaces)")
    held = conf.workspace(workspace)
    base = os.path.expanduser(held.root) if held else allowed[0]
    named = os.path.normpath(os.path.join(base, os.path.expanduser(cwd)) if cwd else base)
    # realpath resolves symlinks and "..", so a link inside a root pointing outside is caught.
    real = os.path.realpath(named)
    if not any(inside(real, r) for r in allowed):
        raise Refusal(f"cwd {cwd or real!r} resolves to {real}, outside the workspace roots {allowed}")
    if not os.path.isdir(real):
        raise Refusal(f"cwd {real} does not exist or is not a directory")
    return named, real


def check_overlay(conf: AgentConf, overlay: Mapping[str, str]) -> None:
    rejected = sorted(k for k in overlay if k not in conf.env_allowlist)
    if rejected:
        raise Refusal(f"environment variable(s) {', '.join(rejected)} not on this agent's env_allowlist")


def held_workspace(
    conf: AgentConf, workspace: str | None, cwd: str, resolve: Callable[[str], str]
) -> tuple[str, AgentWorkspace] | None:
    """The workspace a command runs in: the one named, if this agent holds it, else the one
    whose root holds ``cwd`` (the deepest), else None."""
    tables = conf.workspace_tables()
    if workspace in tables:
        return workspace, tables[workspace]
    found = [(len(resolve(w.root)), n) for n, w in tables.items() if inside(cwd, resolve(w.root))]
    return (max(found)[1], tables[max(found)[1]]) if found else None


def p4_env(held: tuple[str, AgentWorkspace] | None, pwd: str) -> dict[str, str]:
    """The p4 environment the agent gives a command in ``held`` running in ``pwd``."""
    env = {"PWD": pwd}
    if held:
        for var, field in _P4_FIELDS.items():
            value = getattr(held[1], field)
            if value:
                env[var] = value
    return env


def check_p4_env(
    overlay: Mapping[str, str],
    fixed: Mapping[str, str],
    held: tuple[str, AgentWorkspace] | None,
    same_dir: Callable[[str, str], bool],
) -> None:
    """Refusal if the request sets a p4 variable to anything but the agent's own value."""
    where = f"[agent.workspaces.{held[0]}]" if held else "a workspace table [agent.workspaces.NAME] holding the cwd"
    for var in P4_ENV:
        if var not in overlay:
            continue
        mine = fixed.get(var)
        if mine is not None and (overlay[var] == mine or (var == "PWD" and same_dir(overlay[var], mine))):
            continue
        if mine is None:
            raise Refusal(f"environment variable {var} may not be set by a request: this agent sets it from {where}")
        raise Refusal(f"environment variable {var}={overlay[var]!r} differs from this agent's {mine!r} (from {where})")


def build_env(
    conf: AgentConf, overlay: Mapping[str, str], agent_env: Mapping[str, str], fixed: Mapping[str, str]
) -> dict[str, str]:
    env = {k: agent_env[k] for k in BASE_ENV_KEYS if k in agent_env}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(overlay)
    env.update(fixed)
    return env


def locate(argv0: str, cwd: str, path: str) -> str | None:
    """The file argv[0] runs, resolved (None if there is none)."""
    located = shutil.which(argv0, path=path) if "/" not in argv0 else os.path.join(cwd, argv0)
    return os.path.realpath(located) if located else None


def check_executable(conf: AgentConf, argv0: str, located: str | None) -> None:
    """Bare names on the allowlist match a bare argv[0]; absolute entries match the resolved file.

    A bare entry ("p4") deliberately does not match "/tmp/x/p4": otherwise any file named p4
    anywhere would be allowed.
    """
    allowed = conf.allowed_executables
    if "*" in allowed:
        return
    if "/" not in argv0 and argv0 in allowed:
        return
    if located and any(os.path.isabs(a) and os.path.realpath(a) == located for a in allowed):
        return
    raise Refusal(f"executable {argv0!r} is not on this agent's allowed_executables {allowed}")


def check(conf: AgentConf, spec: CmdSpec, workspace: str | None, agent_env: Mapping[str, str]) -> Launch:
    """The Launch to perform for ``spec``, or Refusal. ``spec.argv`` must be non-empty."""
    named, cwd = resolve_cwd(conf, spec.cwd, workspace)
    check_overlay(conf, spec.env)
    held = held_workspace(conf, workspace, cwd, os.path.realpath)
    fixed = p4_env(held, named)
    check_p4_env(spec.env, fixed, held, lambda a, b: os.path.realpath(a) == os.path.realpath(b))
    env = build_env(conf, spec.env, agent_env, fixed)
    argv0 = spec.argv[0]
    located = locate(argv0, cwd, env["PATH"])
    check_executable(conf, argv0, located)
    if p4args.is_p4(argv0, located):
        p4args.check(spec.argv, spec.stdin, cwd, roots(conf), os.path.realpath)
    return Launch(argv=list(spec.argv), cwd=cwd, env=env, executable=located)
