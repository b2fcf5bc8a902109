"""p4sim depots seeded for jobs, and the settings that point a stack at them.

A seeded workspace gives both sides of the configuration: the agent that holds it
(``[agent.workspaces.NAME]``: its root and p4 environment, with its directory as a root) and
the orchestrator that runs jobs in it (``[orchestrator.workspaces.NAME]``). Both say the same
P4PORT, P4USER, P4CLIENT and P4TICKETS: the agent gives them to every command in the
workspace, and refuses a request that says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p4sim.seed import seed
from p4sim.tools import write_shim

# p4sim's fault-injection variables (p4sim/faults.py). An agent passes a command only the
# variables on its env_allowlist, and these belong on it only in stacks that test failures.
P4SIM_FAULT_ENV = (
    "P4SIM_FAULT",
    "P4SIM_FAULT_COUNT",
    "P4SIM_FAULT_STATE",
    "P4SIM_FAULT_ONCE",
    "P4SIM_DELAY_PER_FILE",
    "P4SIM_DIE_AFTER_LINES",
)


@dataclass(frozen=True)
class SeededWorkspace:
    name: str
    dir: Path  # holds the server (dir/server) and the workspace (dir/ws)
    facts: dict[str, Any]  # p4sim.seed's: P4PORT, P4USER, P4CLIENT, root, source, target, conflicts
    conf: dict[str, Any]  # its [orchestrator.workspaces.NAME] table

    @property
    def root(self) -> str:
        return str(self.facts["root"])

    def p4_env(self) -> dict[str, str]:
        """What a person's shell in the workspace sets for p4 (PATH is the caller's)."""
        f = self.facts
        return {"P4PORT": f["P4PORT"], "P4USER": f["P4USER"], "P4CLIENT": f["P4CLIENT"], "PWD": self.root}


def seed_workspace(
    dir: Path, name: str, scenario: str = "clean", password: str | None = None, **conf: Any
) -> SeededWorkspace:
    """A p4sim server and workspace for ``scenario`` in ``dir`` (see p4sim/seed.py); ``conf``
    adds settings to its orchestrator table (env, p4, password_file, ...)."""
    facts = seed(dir, scenario, password=password)
    table = {
        "p4port": facts["P4PORT"],
        "p4user": facts["P4USER"],
        "p4client": facts["P4CLIENT"],
        "root": facts["root"],
        **conf,
    }
    return SeededWorkspace(name, Path(dir), facts, table)


def agent_workspace(w: SeededWorkspace) -> dict[str, str]:
    """The ``[agent.workspaces.NAME]`` table of a seeded workspace, from its orchestrator table."""
    c = w.conf
    table = {"root": c["root"], "p4port": c["p4port"], "p4user": c["p4user"], "p4client": c["p4client"]}
    if c.get("tickets_file"):
        table["tickets"] = c["tickets_file"]
    return table


def agent_settings(workspaces: Iterable[SeededWorkspace]) -> dict[str, Any]:
    """The ``[agent]`` settings of an agent that holds these workspaces."""
    held = list(workspaces)
    return {"workspaces": {w.name: agent_workspace(w) for w in held}, "workspace_roots": [str(w.dir) for w in held]}


def orchestrator_settings(workspaces: Iterable[SeededWorkspace]) -> dict[str, Any]:
    """The ``[orchestrator.workspaces]`` table for these workspaces."""
    return {w.name: w.conf for w in workspaces}


def search_path(first: Path) -> str:
    """This process's PATH with ``first`` in front."""
    return f"{first}{os.pathsep}{os.environ.get('PATH', '')}"


def counting_p4(bin_dir: Path, log: Path) -> str:
    """Write ``bin_dir/p4``, p4sim behind a wrapper that appends "P4PORT argv" of every run to
    ``log`` (so a test or bench can prove nothing ran twice), and return a PATH on which `p4` is it."""
    real = write_shim(bin_dir.parent / f"{bin_dir.name}-p4sim")
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "p4"
    wrapper.write_text(f'#!/bin/sh\necho "$P4PORT $*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return search_path(bin_dir)


def p4sim_path(bin_dir: Path) -> str:
    """Write ``bin_dir/p4`` (running p4sim) and return a PATH on which `p4` is that."""
    write_shim(bin_dir)
    return search_path(bin_dir)
