"""`p4bus deploy-agent`: install, upgrade or remove an agent on a host that only SSH reaches.

All SSH goes through the system client and one ControlMaster (agent/ssh_link.py), so
~/.ssh/config, keys and agent forwarding apply and a refused login is reported once, at once.
The host needs python3 >= 3.11 with venv and nothing else: wheels of p4bus and its dependencies
are built here, copied, and installed with ``pip --no-index``. On the host, everything lives in
the remote dir: wheels/, venv/, agent.toml (0600), state/ (spool), agent.log and ``agentctl``,
a generated sh script that starts/stops the agent as a systemd user unit when ``systemctl
--user`` works there, else as a supervised background process (restart loop, pid file).
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent.ssh_link import ControlMaster, SshError
from common import protocol as P
from common.config import PORT_OFFSETS
from common.rpc import MasterClient, RequestError
from common.ssh import SshDest

MIN_PYTHON = (3, 11)
DEFAULT_REMOTE_DIR = "~/.p4bus-agent"
STOP_WAIT_S = 15.0
q = shlex.quote


class DeployError(Exception):
    """One line naming what failed and what to fix."""


@dataclass
class Plan:
    dest: SshDest
    masters: list[str]
    broker: str
    workspace_roots: list[str]
    master_clients: str = ""  # default: derived from the first master endpoint
    pools: list[str] = field(default_factory=lambda: ["default"])
    slots: int = 4
    agent_id: str = ""  # default: the host's short name, as the agent itself would choose
    allowed_executables: list[str] = field(default_factory=lambda: ["p4"])
    ssh_options: list[str] = field(default_factory=list)
    remote_dir: str = DEFAULT_REMOTE_DIR
    python: str = "python3"
    wheelhouse: Path | None = None  # prebuilt wheels; default: build them now
    register_timeout: float = 60.0


@dataclass
class Host:
    """What one probe learned about the host."""

    home: str
    node: str
    systemd: bool
    python: str
    version: tuple[int, ...]
    machine: str
    venv: bool


def clients_endpoint(master_agents: str) -> str:
    """The client endpoint next to a master's agent endpoint (the default port layout)."""
    parts = urlsplit(master_agents.replace("tcp://", "http://", 1))
    if not parts.hostname or not parts.port:
        raise DeployError(f"cannot derive the master's client endpoint from {master_agents!r}; pass --master-clients")
    offset = PORT_OFFSETS["master_clients"] - PORT_OFFSETS["master_agents"]
    return f"tcp://{parts.hostname}:{parts.port + offset}"


class Remote:
    """Scripts and copies on the host over one ControlMaster; every failure is a DeployError."""

    def __init__(self, dest: SshDest, options: list[str], local_dir: Path) -> None:
        self.master = ControlMaster(dest, options, local_dir)

    def __enter__(self) -> Remote:
        try:
            self.master.ensure()
        except SshError as exc:
            raise DeployError(str(exc)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.master.stop()

    def sh(self, script: str, what: str, stdin: bytes | None = None, timeout: float = 300.0) -> str:
        """Run ``script`` with sh on the host; its stdout, or DeployError with its last error line."""
        argv = self.master.session(f"exec sh -c {q(script)}")
        return self._run(argv, what, stdin, timeout)

    def copy(self, files: list[Path], remote_dir: str) -> None:
        self._run(self.master.copy([str(f) for f in files], remote_dir), f"copying to {remote_dir}", None, 300.0)

    def _run(self, argv: list[str], what: str, stdin: bytes | None, timeout: float) -> str:
        try:
            done = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{what} on {self.master.dest} did not finish within {timeout:.0f}s") from None
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit {done.returncode}"]
            raise DeployError(f"{what} on {self.master.dest} failed: {lines[-1].strip()}")
        return done.stdout.decode(errors="replace")


# ---------------------------------------------------------------------------- the host


PROBE = """echo "home=$HOME"; echo "node=$(uname -n)"
command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1 && echo systemd=yes
p=$(command -v {python}) || exit 0
echo "python=$p"
"$p" -c 'import sys, platform; print("version=%d.%d.%d" % sys.version_info[:3]); print("machine=" + platform.machine())
import ensurepip, venv; print("venv=yes")' 2>/dev/null || true
"""


def probe(remote: Remote, python: str) -> Host:
    facts = dict(
        line.split("=", 1) for line in remote.sh(PROBE.format(python=q(python)), "probing").splitlines() if "=" in line
    )
    return Host(
        home=facts.get("home", ""),
        node=facts.get("node", "").split(".")[0],
        systemd="systemd" in facts,
        python=facts.get("python", ""),
        machine=facts.get("machine", ""),
        venv="venv" in facts,
        version=tuple(int(x) for x in facts["version"].split(".")) if "version" in facts else (),
    )


def check_python(host: Host, python: str, dest: SshDest) -> None:
    want = ".".join(map(str, MIN_PYTHON))
    if not host.python:
        raise DeployError(
            f"{dest} has no {python} on its PATH; install Python >= {want} there "
            f"(e.g. apt-get install python3 python3-venv) or pass --python"
        )
    if host.version < MIN_PYTHON:
        found = ".".join(map(str, host.version)) or "an unknown version"
        raise DeployError(
            f"{dest} has {python} {found} at {host.python}, p4bus needs >= {want}; install "
            f"python{want} there (e.g. apt-get install python{want} python{want}-venv) and pass --python python{want}"
        )
    if not host.venv:
        raise DeployError(
            f"{python} on {dest} cannot create virtual environments; install its venv module "
            f"(Debian/Ubuntu: apt-get install python{host.version[0]}.{host.version[1]}-venv)"
        )


# ---------------------------------------------------------------------------- wheels


def source_tree() -> Path:
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise DeployError(f"no p4bus source tree at {root} to build wheels from; pass --wheelhouse DIR")
    return root


def build_wheelhouse(out: Path, host: Host) -> list[Path]:
    """Wheels of p4bus and its dependencies for the host's Python (built or fetched here)."""
    local = (sys.version_info[:2], platform.machine())
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(source_tree())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(f"building wheels failed: {_last(done.stderr)}")
    if local != (host.version[:2], host.machine):
        # Compiled dependencies must match the host's Python and CPU: fetch its wheels instead.
        _retarget(out, host)
    return sorted(out.glob("*.whl"))


def _retarget(out: Path, host: Host) -> None:
    pyver = f"{host.version[0]}{host.version[1]}"
    binary = [w for w in out.glob("*.whl") if not w.name.endswith("-none-any.whl")]
    names = [w.name.split("-")[0].replace("_", "-") for w in binary]
    tags = [f"manylinux_2_{n}_{host.machine}" for n in (28, 27, 26, 24, 17)] + [f"manylinux2014_{host.machine}"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--only-binary=:all:",
        "--dest",
        str(out),
        "--python-version",
        pyver,
        "--implementation",
        "cp",
        *(a for t in tags for a in ("--platform", t)),
        *names,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(
            f"fetching wheels of {', '.join(names)} for Python {pyver} on {host.machine} failed: {_last(done.stderr)}"
        )
    for w in binary:
        w.unlink()


# ---------------------------------------------------------------------------- on the host


def agent_toml(plan: Plan, agent_id: str, remote_dir: str) -> str:
    def s(v: str) -> str:
        return json.dumps(v)  # a JSON string is a valid TOML basic string

    def lst(vs: list[str]) -> str:
        return "[" + ", ".join(s(v) for v in vs) + "]"

    return "\n".join(
        [
            "# Written by p4bus deploy-agent; re-running it overwrites this file.",
            f"state_dir = {s(remote_dir + '/state')}",
            "",
            "[agent]",
            f"id = {s(agent_id)}",
            f"masters = {lst(plan.masters)}",
            f"broker = {s(plan.broker)}",
            f"pools = {lst(plan.pools)}",
            f"slots = {plan.slots}",
            f"workspace_roots = {lst(plan.workspace_roots)}",
            f"allowed_executables = {lst(plan.allowed_executables)}",
            "",
        ]
    )


def agentctl(remote_dir: str, agent_id: str, systemd: bool) -> str:
    """The host's start/stop script; the start mode is chosen once, at deploy time."""
    d = remote_dir
    run = f"{d}/venv/bin/p4bus --config {d}/agent.toml agent"
    if systemd:
        unit = f"p4bus-agent-{agent_id}.service"
        unit_file = f'"$HOME/.config/systemd/user/{unit}"'
        body = f"""unit={q(unit)}
case "$1" in
start)
  mkdir -p "$HOME/.config/systemd/user"
  printf '%s\\n' '[Unit]' 'Description=p4bus agent {agent_id}' '[Service]' 'ExecStart={run}' \\
    'Restart=always' 'RestartSec=1' 'LimitNOFILE=65536' '[Install]' 'WantedBy=default.target' > {unit_file}
  systemctl --user daemon-reload && systemctl --user enable "$unit" && systemctl --user restart "$unit" ;;
stop) systemctl --user disable --now "$unit" 2>/dev/null || true; rm -f {unit_file}; systemctl --user daemon-reload ;;
esac"""
    else:
        body = f"""pidfile={d}/supervisor.pid
case "$1" in
supervise)  # restart the agent a second after it exits, until `agentctl stop`
  while :; do {run} >>{d}/agent.log 2>&1; [ -e {d}/stopped ] && exit 0; sleep 1; done ;;
start)
  rm -f {d}/stopped
  setsid sh {d}/agentctl supervise </dev/null >/dev/null 2>&1 &
  echo $! > "$pidfile" ;;
stop)
  touch {d}/stopped
  pg=$(cat "$pidfile" 2>/dev/null) || exit 0
  grep -q agentctl "/proc/$pg/cmdline" 2>/dev/null || {{ rm -f "$pidfile"; exit 0; }}  # stale pid file
  kill -TERM -"$pg" 2>/dev/null
  i=0; while kill -0 -"$pg" 2>/dev/null && [ $i -lt {int(STOP_WAIT_S * 10)} ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL -"$pg" 2>/dev/null; rm -f "$pidfile" ;;
esac"""
    return f"#!/bin/sh\n# p4bus agent {agent_id}: start | stop (written by p4bus deploy-agent)\n{body}\n"


def _abs_dir(remote_dir: str, home: str) -> str:
    path = home + remote_dir[1:] if remote_dir == "~" or remote_dir.startswith("~/") else remote_dir
    # Plain paths only: agentctl and the systemd unit embed it unquoted.
    if not path.startswith("/") or q(path) != path:
        raise DeployError(
            f"--remote-dir {remote_dir!r} must be absolute (or start with ~/) and contain no "
            "spaces or shell metacharacters"
        )
    return path


# ---------------------------------------------------------------------------- the master's view


def _registered(mc: MasterClient, agent_id: str) -> P.AgentInfo | None:
    return next((a for a in mc.agents() if a.agent_id == agent_id and a.alive), None)


def _master_check(endpoint: str) -> None:
    with MasterClient([endpoint], timeout=3.0) as mc:
        try:
            mc.ping()
        except RequestError as exc:
            raise DeployError(
                f"the master's client endpoint {endpoint} does not answer from here "
                f"({exc.message}); start the master or pass --master-clients"
            ) from None


def wait_registered(endpoint: str, agent_id: str, old_epoch: str, timeout: float) -> P.AgentInfo | None:
    deadline = time.monotonic() + timeout
    with MasterClient([endpoint], timeout=2.0) as mc:
        while time.monotonic() < deadline:
            try:
                info = _registered(mc, agent_id)
                if info is not None and info.epoch != old_epoch:
                    return info
            except RequestError:
                pass  # a master restarting: keep asking until the deadline
            time.sleep(0.2)
    return None


def wait_dropped(endpoint: str, agent_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with MasterClient([endpoint], timeout=2.0) as mc:
        while time.monotonic() < deadline:
            try:
                if _registered(mc, agent_id) is None:
                    return True
            except RequestError:
                pass
            time.sleep(0.2)
    return False


# ---------------------------------------------------------------------------- deploy and remove


Say = Callable[[str], None]


def deploy(plan: Plan, say: Say) -> str:
    """Install (or upgrade in place) and start the agent; returns its id once registered."""
    clients = plan.master_clients or clients_endpoint(plan.masters[0])
    _master_check(clients)
    with (
        tempfile.TemporaryDirectory(prefix="p4bus-deploy-") as tmp,
        Remote(plan.dest, plan.ssh_options, Path(tmp)) as remote,
    ):
        host = probe(remote, plan.python)
        check_python(host, plan.python, plan.dest)
        agent_id = plan.agent_id or host.node
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", agent_id):
            raise DeployError(f"agent id {agent_id!r} must be 1-64 letters, digits, '_', '.' or '-'; pass --agent-id")
        rdir = _abs_dir(plan.remote_dir, host.home)
        if plan.wheelhouse is not None:
            wheels = sorted(plan.wheelhouse.glob("*.whl"))
            if not wheels:
                raise DeployError(f"--wheelhouse {plan.wheelhouse} holds no wheels")
        else:
            t0 = time.monotonic()
            wheels = build_wheelhouse(Path(tmp) / "wheels", host)
            say(f"built {len(wheels)} wheels in {time.monotonic() - t0:.1f}s")
        with MasterClient([clients], timeout=3.0) as mc:
            old = _registered(mc, agent_id)
        d = rdir
        remote.sh(
            f"mkdir -p {d} && chmod 700 {d} && {{ [ ! -x {d}/agentctl ] || {d}/agentctl stop; }} "
            f"&& rm -rf {d}/wheels && mkdir {d}/wheels",
            "stopping the old agent",
        )
        if old is not None:
            say(f"stopped agent {agent_id} (upgrade)")
        remote.copy(wheels, f"{rdir}/wheels")
        remote.sh(
            f"{{ [ -x {d}/venv/bin/python ] || {q(host.python)} -m venv {d}/venv; }} && "
            f"{d}/venv/bin/python -m pip install -q --no-index --find-links {d}/wheels --force-reinstall p4bus",
            "installing p4bus",
        )
        remote.sh(
            f"umask 077 && cat > {d}/agent.toml && chmod 600 {d}/agent.toml",
            "writing the agent config",
            stdin=agent_toml(plan, agent_id, rdir).encode(),
        )
        remote.sh(
            f"cat > {d}/agentctl && chmod 755 {d}/agentctl && {d}/agentctl start",
            "starting the agent",
            stdin=agentctl(rdir, agent_id, host.systemd).encode(),
        )
        how = "systemd user unit" if host.systemd else "supervised background process"
        say(f"installed in {plan.dest.host}:{rdir}, started as a {how}; waiting for it to register")
        if wait_registered(clients, agent_id, old.epoch if old else "", plan.register_timeout) is None:
            tail = remote.sh(f"tail -n 3 {d}/agent.log 2>/dev/null || true", "reading the agent log").strip()
            last = tail.splitlines()[-1] if tail else "(empty)"
            raise DeployError(
                f"agent {agent_id} started on {plan.dest.host} but did not register with {clients} within "
                f"{plan.register_timeout:.0f}s: check that {plan.dest.host} can reach {', '.join(plan.masters)} "
                f"and {plan.broker} (log {rdir}/agent.log: {last})"
            )
    return agent_id


def remove(dest: SshDest, ssh_options: list[str], remote_dir: str, clients: str | None, say: Say) -> str:
    """Stop and delete the agent in ``remote_dir``; returns its id ('' if none was there)."""
    with tempfile.TemporaryDirectory(prefix="p4bus-deploy-") as tmp, Remote(dest, ssh_options, Path(tmp)) as remote:
        home = remote.sh('echo "$HOME"', "probing").strip()
        d = _abs_dir(remote_dir, home)
        agent_id = remote.sh(
            f"sed -n 's/^id = \"\\(.*\\)\"$/\\1/p' {d}/agent.toml 2>/dev/null || true", "reading the agent config"
        ).strip()
        remote.sh(f"{{ [ ! -x {d}/agentctl ] || {d}/agentctl stop; }} && rm -rf {d}", "removing the agent")
    if agent_id and clients and not wait_dropped(clients, agent_id, STOP_WAIT_S):
        raise DeployError(f"agent {agent_id} was removed from {dest.host} but {clients} still lists it")
    say(f"removed agent {agent_id or '(none found)'} from {dest.host}:{remote_dir}")
    return agent_id


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
