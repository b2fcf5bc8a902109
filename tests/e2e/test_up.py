"""`p4bus up` keeps its stack up: a service that dies is started again (issue 12 item 9)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.zmqutil import free_port_base
from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.timeout(120)


class Up:
    """`p4bus up` as a person runs it, its stderr in a file the test reads."""

    def __init__(self, tmp: Path, *options: str) -> None:
        self.state = tmp / "state"
        # The bus's six, the dashboard's and the services' metrics (port_base + 7 ... + 12).
        self.port_base = free_port_base(13)
        self.err = tmp / "up.err"
        self.out = tmp / "up.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("P4BUS_")}
        self.env = {**env, "P4BUS_KEY": str(self.state / "keys" / "operator.key_secret")}
        with open(self.out, "w") as out, open(self.err, "w") as err:  # the child keeps its own copies
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "p4bus",
                    "up",
                    "--state-dir",
                    str(self.state),
                    "--port-base",
                    str(self.port_base),
                    *options,
                ],
                stdout=out,
                stderr=err,
                cwd=REPO,
                env=env,
            )

    def said(self) -> str:
        return self.err.read_text()

    def metrics_urls(self) -> dict[str, str]:
        """Each service's metrics URL as up printed it, by name, once it is up."""
        wait_for(lambda: "p4bus is up" in self.out.read_text() or self.proc.poll() is not None, 60, "p4bus up")
        assert self.proc.poll() is None, self.said()
        return dict(re.findall(r"([\w-]+) metrics\s+(http://\S+)", self.out.read_text()))

    def service_pid(self, service: str) -> int | None:
        """The pid of the up's child running ``service`` (its command line ends with it)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and argv[-2:] == [service.encode(), b""]:
                return int(entry.name)
        return None

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p4bus", "--port-base", str(self.port_base), "run", "--", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=self.env,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "health", timeout=2) as r:
            return bool(json.load(r)["status"] == "ok")
    except OSError:
        return False


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path)
    yield u
    u.stop()


def test_a_killed_master_and_agent_come_back_and_run_works_again(up: Up) -> None:
    # Each service's metrics URL is printed (on port_base's metrics ports) and answers /health.
    urls = up.metrics_urls()
    assert sorted(urls) == ["agent", "broker", "master", "orchestrator", "web"], up.out.read_text()
    assert urls["broker"] == f"http://127.0.0.1:{up.port_base + 7}/"
    for url in urls.values():
        wait_for(lambda u=url: health_ok(u), 20, f"{url}health to say ok")
    first = {s: up.service_pid(s) for s in ("master", "agent")}
    before = up.run("echo", "before")
    assert before.stdout == "before\n", before.stderr
    for service, pid in first.items():
        os.kill(pid, signal.SIGKILL)
        again = wait_for(lambda s=service, old=pid: (p := up.service_pid(s)) not in (None, old) and p, 30, "it back")
        assert again != pid
        wait_for(lambda s=service: f"{s} restarted" in up.said(), 10, f"up to say {service} restarted")
        assert f"{service} exited with code -9" in up.said()
    # The stack is whole again: a command goes master -> agent -> broker -> this client.
    done = wait_for(lambda: (r := up.run("echo", "after")).returncode == 0 and r, 60, "`p4bus run` to work again")
    assert done.stdout == "after\n"
    assert up.proc.poll() is None, up.said()


def test_a_second_broker_serves_metrics_of_its_own(tmp_path: Path) -> None:
    """The settings' metrics port is the first broker's; the second would fail to bind it."""
    up = Up(tmp_path, "--brokers", "2")
    try:
        urls = up.metrics_urls()
        assert urls["broker"] == f"http://127.0.0.1:{up.port_base + 7}/", up.out.read_text()
        assert "broker-2" in urls and len(set(urls.values())) == len(urls), urls  # every service its own
        for url in (urls["broker"], urls["broker-2"]):
            wait_for(lambda u=url: health_ok(u), 20, f"{url}health to say ok")
        logs = up.state / "logs"
        assert not [f.name for f in logs.iterdir() if "metrics.bind_failed" in f.read_text(errors="replace")]
    finally:
        up.stop()
