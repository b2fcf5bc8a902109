"""A whole p4bus on one machine as child processes: what `p4bus up` and `p4bus demo` run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.config import Config
from common.rpc import MasterClient, RequestError

SERVICES = ("broker", "master", "orchestrator", "agent")


class StackError(RuntimeError):
    pass


class LocalStack:
    def __init__(
        self,
        cfg: Config,
        config_path: str | None,
        services: tuple[str, ...] = SERVICES,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.services = services
        self.env = env or {}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, timeout: float = 20.0) -> None:
        for name in self.services:
            self._spawn(name)
        self.wait_ready(timeout)

    def _spawn(self, name: str) -> None:
        args = [sys.executable, "-m", "p4bus", "--port-base", str(self.cfg.port_base)]
        if self.config_path:
            args += ["--config", self.config_path]
        env = {**os.environ, "P4BUS_STATE_DIR": str(self.cfg.state_path), **self.env}
        out = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            args + [name], env=env, stdout=out, stderr=out or None, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def wait_ready(self, timeout: float) -> None:
        """Ready = the master answers and lists at least one agent (if we started one)."""
        deadline = time.monotonic() + timeout
        with MasterClient([self.cfg.endpoint("master_clients")], timeout=0.5) as mc:
            while True:
                self.check_alive()
                try:
                    agents = mc.agents()
                    if "agent" not in self.services or agents:
                        return
                except RequestError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(
                        f"services did not become ready within {timeout:g}s"
                        + (f" (logs in {self.log_dir})" if self.log_dir else "")
                    )
                time.sleep(0.05)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise StackError(
                    f"{name} exited with code {p.returncode}"
                    + (f" (see {self.log_dir / (name + '.log')})" if self.log_dir else "")
                )

    def stop(self, grace: float = 5.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
