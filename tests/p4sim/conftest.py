"""Fixtures for p4sim tests: the real executable (through the `p4` shim) against seeded servers."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from p4sim.seed import seed
from p4sim.tools import write_shim


@dataclass
class Result:
    out: str
    err: str
    rc: int

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


class P4:
    """Runs `p4 ARGS` as a subprocess in a workspace, like a caller of real p4 would."""

    def __init__(self, p4: Path, env: dict[str, str], cwd: Path):
        self.p4, self.env, self.cwd = p4, env, cwd

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Result:
        cwd = cwd or self.cwd
        full_env = {**self.env, "PWD": str(cwd), **(env or {})}
        done = subprocess.run(
            [str(self.p4), *args], input=stdin, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60
        )
        return Result(done.stdout, done.stderr, done.returncode)

    def raw(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.p4), *args],
            input=stdin,
            capture_output=True,
            env={**self.env, "PWD": str(self.cwd)},
            cwd=self.cwd,
            timeout=60,
        )


@pytest.fixture(scope="session")
def p4_exe(tmp_path_factory) -> Path:
    return write_shim(tmp_path_factory.mktemp("bin"))


def _env(info: dict, home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("P4", "PYTEST"))}
    return {
        **keep,
        "P4PORT": info["P4PORT"],
        "P4USER": info["P4USER"],
        "P4CLIENT": info["P4CLIENT"],
        "HOME": str(home),
        "P4TICKETS": str(home / ".p4tickets"),
    }


@pytest.fixture
def make_server(tmp_path, p4_exe):
    """make_server(scenario, password=None) -> (P4 runner in the workspace root, seed facts)."""

    def make(scenario: str = "clean", password: str | None = None, name: str = "s") -> tuple[P4, dict]:
        info = seed(tmp_path / name, scenario, password)
        home = tmp_path / f"{name}-home"
        home.mkdir()
        return P4(p4_exe, _env(info, home), Path(info["root"])), info

    return make


@pytest.fixture
def clean(make_server):
    return make_server("clean")


@pytest.fixture
def conflict(make_server):
    return make_server("conflict")


def new_change(p4: P4, description: str = "Integrate dev to main") -> int:
    r = p4("change", "-i", stdin=f"Change: new\n\nDescription:\n\t{description}\n")
    assert r.rc == 0, r.err
    return int(r.out.split()[1])
