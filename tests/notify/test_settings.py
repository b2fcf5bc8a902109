"""`p4bus notify` refuses settings that cannot work, in one line, before it starts anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomli_w

from tests.conftest import REPO
from tests.notify.conftest import secret_file

pytestmark = pytest.mark.timeout(60)


def run_notify(tmp_path, notify: dict) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "p4bus.toml"
    cfg.write_text(tomli_w.dumps({"state_dir": str(tmp_path / "state"), "notify": notify}))
    return subprocess.run(
        [sys.executable, "-m", "p4bus", "--config", str(cfg), "notify"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def mail(tmp_path, mode: int) -> dict:
    return {
        "kind": "email",
        "smtp_host": "127.0.0.1",
        "sender": "p4bus@example.com",
        "to": ["a@example.com"],
        "username": "u",
        "password_file": str(secret_file(tmp_path, "pw", mode)),
    }


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        (
            {"rules": [{"receivers": ["chat"]}]},
            "notify.rules[0] names receiver 'chat', which [notify.receivers] does not define (defined: none)",
        ),
        ({"receivers": {"m": "world"}}, "invalid configuration"),
        ("mail-0644", "has mode 0644; others may read it: chmod 600"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tmp_path, notify, message):
    if notify == "mail-0644":
        notify = {"receivers": {"m": mail(tmp_path, 0o644)}, "rules": [{"receivers": ["m"]}]}
    done = run_notify(tmp_path, notify)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p4bus: config error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "state" / "notify.db").exists()  # refused before anything was written
