"""What the agent agrees to run (DESIGN §5): allowlisted executables, cwd inside a configured
root, an allowlisted environment. Pure functions of (config, request) so they are unit-tested.

A refusal is an outcome, not a protocol error: the session records it in the spool as a
finished command with ``error`` set (see agent/session.py), so it is idempotent and queryable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import AgentConf
from common.protocol import CmdSpec

# The only variables a child inherits from the agent; everything else must come from the
# request's env overlay and pass the allowlist.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class Refusal(Exception):
    """The request is well-formed but this agent will not run it; the message says why."""


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: str
    env: dict[str, str]


def roots(conf: AgentConf) -> list[str]:
    """Every directory a command may run in (workspace roots first, then named workspaces)."""
    out: list[str] = []
    for r in [*conf.workspace_roots, *conf.workspaces.values()]:
        real = os.path.realpath(os.path.expanduser(r))
        if real not in out:
            out.append(real)
    return out


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_cwd(conf: AgentConf, cwd: str | None, workspace: str | None) -> str:
    allowed = roots(conf)
    if not allowed:
        raise Refusal("this agent has no workspace roots configured (agent.workspace_roots / agent.workspaces)")
    base = allowed[0]
    if workspace and workspace in conf.workspaces:
        base = os.path.realpath(os.path.expanduser(conf.workspaces[workspace]))
    # realpath resolves symlinks and "..", so a link inside a root pointing outside is caught.
    real = os.path.realpath(os.path.join(base, os.path.expanduser(cwd)) if cwd else base)
    if not any(inside(real, r) for r in allowed):
        raise Refusal(f"cwd {cwd or real!r} resolves to {real}, outside the workspace roots {allowed}")
    if not os.path.isdir(real):
        raise Refusal(f"cwd {real} does not exist or is not a directory")
    return real


def check_overlay(conf: AgentConf, overlay: Mapping[str, str]) -> None:
    rejected = sorted(k for k in overlay if k not in conf.env_allowlist)
    if rejected:
        raise Refusal(f"environment variable(s) {', '.join(rejected)} not on this agent's env_allowlist")


def build_env(conf: AgentConf, overlay: Mapping[str, str], agent_env: Mapping[str, str]) -> dict[str, str]:
    check_overlay(conf, overlay)
    env = {k: agent_env[k] for k in BASE_ENV_KEYS if k in agent_env}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(overlay)
    return env


def check_executable(conf: AgentConf, argv0: str, cwd: str, path: str) -> None:
    """Bare names on the allowlist match a bare argv[0]; absolute entries match the resolved file.

    A bare entry ("p4") deliberately does not match "/tmp/x/p4": otherwise any file named p4
    anywhere would be allowed.
    """
    allowed = conf.allowed_executables
    if "*" in allowed:
        return
    if "/" not in argv0 and argv0 in allowed:
        return
    located = shutil.which(argv0, path=path) if "/" not in argv0 else os.path.join(cwd, argv0)
    if located:
        real = os.path.realpath(located)
        if any(os.path.isabs(a) and os.path.realpath(a) == real for a in allowed):
            return
    raise Refusal(f"executable {argv0!r} is not on this agent's allowed_executables {allowed}")


def check(conf: AgentConf, spec: CmdSpec, workspace: str | None, agent_env: Mapping[str, str]) -> Launch:
    """The Launch to perform for ``spec``, or Refusal. ``spec.argv`` must be non-empty."""
    cwd = resolve_cwd(conf, spec.cwd, workspace)
    env = build_env(conf, spec.env, agent_env)
    check_executable(conf, spec.argv[0], cwd, env["PATH"])
    return Launch(argv=list(spec.argv), cwd=cwd, env=env)
