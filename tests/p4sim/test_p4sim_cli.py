"""p4sim's own command line: help, and a `sim:` P4PORT that names no server (issue 12 item 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def p4sim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from p4sim.cli import main; sys.exit(main(['p4sim', *sys.argv[1:]]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=30, cwd=REPO, env=env
    )


def test_help_lists_the_tools_and_exits_0() -> None:
    for flag in ("--help", "-h"):
        done = p4sim(flag)
        assert done.returncode == 0 and "p4sim init DIR" in done.stdout and "p4sim seed" in done.stdout


def test_a_sim_port_without_a_server_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "typo"
    done = p4sim("info", env={"P4PORT": f"sim:{root}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "Connect to server failed" in done.stderr and f"no server in {root}" in done.stderr
    assert not root.exists()


def test_init_makes_an_empty_server_that_answers(tmp_path: Path) -> None:
    root = tmp_path / "server"
    made = p4sim("init", str(root))
    assert made.returncode == 0 and made.stdout.strip() == f"P4PORT=sim:{root}"
    info = p4sim("info", env={"P4PORT": f"sim:{root}", "PATH": "/usr/bin:/bin"})
    assert info.returncode == 0 and f"Server root: {root}" in info.stdout
