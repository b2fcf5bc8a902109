"""The services of one p4bus as child processes, all configured from one settings tree.

Every start writes the tree (plus that start's extra settings) as a TOML file and runs
``python -m p4bus --config FILE SERVICE`` with its output in a log file. P4BUS_* variables of
this process are not passed on: what the file says is what the service runs with. Nor are the
variables that hold a workspace's password (``password_env``), except to the orchestrator: the
one process that logs in. Config and log files are the user's alone (0600 in 0700 directories).

Secure by default: unless the tree says ``insecure = true``, the first start creates the key
pairs of the local services and an ``operator`` key, each agent's start its own key (role agent,
named by its id), all authorized in the keyring of the stack's keys directory.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import tomli_w

from common import auth, keys, roles
from common import config as cfgmod
from common.rpc import MasterClient, OrchestratorClient, RequestError
from common.zmqutil import ephemeral_port, free_port_base

# What `p4bus up` and `p4bus demo` start, in this order (each is a `p4bus SERVICE` command): the
# bus, then its clients. A new service adds its name here, its key to LOCAL_KEYS, and, if it
# answers something, a readiness check to READY and its address for people to PEOPLE_URLS.
SERVICES = ("broker", "master", "orchestrator", "agent", "web")
# The keys a stack makes on its first start: name -> role (agents get theirs as they start).
LOCAL_KEYS = {
    "broker": roles.BROKER,
    "master": roles.MASTER,
    "orchestrator": roles.ORCHESTRATOR,
    "operator": roles.OPERATOR,
    "web": roles.WEB,
    # The notifier (p4bus/notify) only reads the bus.
    "notify": roles.VIEWER,
}
START_TIMEOUT_S = 20.0
# A readiness question costs one request; a quicker poll only loads the two cores others share.
POLL_S = 0.05
# Per request while waiting: a service that is not up yet simply does not answer.
ASK_TIMEOUT_S = 0.5

T = TypeVar("T")


class StackError(RuntimeError):
    """A service exited, or the stack did not become ready; the message says where the logs are."""


def wait_for(pred: Callable[[], T | None], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll a predicate that asks a real owner (a socket, a file, a process); return its first truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Launch:
    """How a service was started, so that it can be started again the same way."""

    service: str
    name: str  # unique within the stack (an agent's id when there are several); names the log file
    args: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # settings over the stack's tree
    env: Mapping[str, str] = field(default_factory=dict)


class ServiceProc(subprocess.Popen[bytes]):
    """A running service with how it was started and where its output goes."""

    def __init__(self, launch: Launch, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path | None) -> None:
        self.launch = launch
        self.service = launch.service
        self.name = launch.name
        self.log_path = log_path
        self.stopped = False  # stopped on purpose, so not a failure
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The child gets its own copy of the descriptor; ours closes with the block.
        with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
            super().__init__(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                # Its own process group, so a kill reaches the service and nothing of ours.
                start_new_session=True,
            )

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


class Stack:
    """Services started from ``tree`` (change it between starts to start the next one differently)."""

    def __init__(
        self,
        tree: dict[str, Any],
        config_dir: Path,
        *,
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        config_prefix: str = "p4bus",
        free_metrics: bool = True,
    ) -> None:
        self.tree = tree
        self.config_dir = config_dir
        self.log_dir = log_dir or config_dir
        self.env = dict(env or {})  # over this process's environment, for every service
        self.cwd = cwd
        self.procs: list[ServiceProc] = []
        # service (or one service's name, e.g. an agent's id, which wins) -> argv in front of
        # its command, to run it on another host, e.g. ("ip", "netns", "exec", NS)
        # (harness/netns.py); it must exec the service, so that the pid is the service's. Read
        # at every start, so a restart runs where the map says now.
        self.placement: dict[str, tuple[str, ...]] = {}
        self._prefix = config_prefix
        # Each service's metrics endpoint: with free_metrics, a free loopback port per name (kept
        # across restarts; from the ephemeral range, where no stack's port_base range lies)
        # unless the settings name one, so that stacks side by side (tests,
        # several agents in one stack) never meet on port_base's metrics ports; without, the
        # settings' own (`p4bus up`: ports an operator can point Prometheus at) for the first
        # name of each service, and a free port for any other (a second broker or orchestrator
        # would fail to bind the first one's).
        self.free_metrics = free_metrics
        self.metrics_urls: dict[str, str] = {}
        self._settings_metrics: dict[str, str] = {}  # service -> the name that has its port
        self._files = 0
        self._last_file: tuple[dict[str, Any], Path] | None = None

    # ------------------------------------------------------------------ settings
    def settings(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return cfgmod.deep_merge(self.tree, extra or {})

    def config(self, extra: Mapping[str, Any] | None = None) -> cfgmod.Config:
        return cfgmod.from_tree(self.settings(extra), "the stack's settings")

    def endpoint(self, name: str) -> str:
        return self.config().endpoint(name)

    def config_file(self, extra: Mapping[str, Any] | None = None) -> Path:
        """The settings (plus ``extra``) as a TOML file; a new file only when they changed."""
        tree = self.settings(extra)
        if self._last_file is not None and self._last_file[0] == tree:
            return self._last_file[1]
        self._files += 1
        self.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.config_dir / f"{self._prefix}-{self._files}.toml"
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(tomli_w.dumps(tree))
        # A copy: the caller may change nested tables of the tree in place before the next start.
        self._last_file = (copy.deepcopy(tree), path)
        return path

    # ------------------------------------------------------------------ keys
    def ensure_keys(self, extra: Mapping[str, Any] | None = None, agent: bool = False) -> None:
        """The local keys (and, for an agent's start, that agent's key) exist and are authorized.
        ``extra`` is read only for the agent's id: a start meant to fail on bad settings still does."""
        cfg = self.config()
        if cfg.insecure:
            return
        wanted = dict(LOCAL_KEYS)
        if agent:
            wanted[str(self.settings(extra).get("agent", {}).get("id") or cfg.agent_id())] = roles.AGENT
        keys.init(cfg.keys_path, cfg.keyring_path, wanted)

    def security(self, name: str = "operator", role: str | None = None) -> auth.Security | None:
        """Key ``name`` of this stack's keys directory, created with ``role`` if it is missing
        (None when the stack is insecure)."""
        cfg = self.config()
        if cfg.insecure:
            return None
        self.ensure_keys()
        if role is not None:
            keys.init(cfg.keys_path, cfg.keyring_path, {name: role})
        return auth.Security(keys.load_pair(keys.secret_path(cfg.keys_path, name)), keys.Keyring(cfg.keyring_path))

    def replicate_brokers(self, n: int) -> dict[str, dict[str, Any]]:
        """Make the bus ``n`` brokers (the tree's ``brokers``): the first is the one broker_*
        names, each other gets three free ports and a journal of its own. Returns the extra
        settings of each one's start, by name: ``start("broker", name=NAME, extra=EXTRA)``."""
        cfg = self.config()
        first = cfg.bus_brokers()[0]
        brokers = [msgspec.to_builtins(first)]
        starts: dict[str, dict[str, Any]] = {"broker": {}}
        for i in range(2, n + 1):
            base = free_port_base(3, cfg.host)
            xsub, xpub, replay = (f"tcp://{cfg.host}:{base + k}" for k in range(3))
            brokers.append({"xsub": xsub, "xpub": xpub, "replay": replay})
            journal = str(cfg.state_path / f"journal-{i}.db")
            starts[f"broker-{i}"] = {
                "broker_xsub": xsub,
                "broker_xpub": xpub,
                "broker_replay": replay,
                "broker": {"journal": journal},
            }
        self.tree["brokers"] = brokers
        return starts

    # ------------------------------------------------------------------ processes
    def start(
        self,
        service: str,
        *args: str,
        name: str | None = None,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServiceProc:
        """Start ``p4bus --config FILE SERVICE ARGS``; ``env`` goes over the stack's own."""
        return self._spawn(Launch(service, name or service, args, dict(extra or {}), dict(env or {})))

    def _spawn(self, launch: Launch) -> ServiceProc:
        self.ensure_keys(launch.extra, agent=launch.service == "agent")
        config = self.config_file(self._with_metrics(launch))
        env = {k: v for k, v in os.environ.items() if not k.startswith(cfgmod.ENV_PREFIX)}
        env.update(self.env)
        env.update(launch.env)
        if launch.service != "orchestrator":
            for name in password_variables(self.settings(launch.extra)):
                env.pop(name, None)
        where = self.placement.get(launch.name, self.placement.get(launch.service, ()))
        argv = [*where, sys.executable, "-m", "p4bus", "--config", str(config), launch.service, *launch.args]
        earlier = sum(1 for p in self.procs if p.name == launch.name)
        log = self.log_dir / (f"{launch.name}.log" if not earlier else f"{launch.name}-{earlier + 1}.log")
        proc = ServiceProc(launch, argv, log, env, self.cwd)
        self.procs.append(proc)
        return proc

    def _with_metrics(self, launch: Launch) -> Mapping[str, Any]:
        """The launch's extra settings, with the service's metrics endpoint added if the stack
        chooses it (free_metrics, or a second name of one service) and the settings do not."""
        service = launch.service
        if service not in cfgmod.METRICS_PORT_OFFSETS or self.settings(launch.extra).get(service, {}).get("metrics"):
            return launch.extra
        if not self.free_metrics and self._settings_metrics.setdefault(service, launch.name) == launch.name:
            return launch.extra
        url = self.metrics_urls.setdefault(launch.name, f"http://127.0.0.1:{ephemeral_port()}/")
        return cfgmod.deep_merge({service: {"metrics": url}}, launch.extra)

    def metrics_url(self, name: str) -> str | None:
        """Where the service started as ``name`` serves its metrics and /health (None: off)."""
        launch = self.proc(name).launch
        return self.metrics_urls.get(name) or self.config(launch.extra).metrics_url(launch.service)

    def start_orchestrators(self) -> list[ServiceProc]:
        """One orchestrator per endpoint the tree's ``orchestrators`` lists, each binding its own
        (named orchestrator, orchestrator-2, ...), all on the same store: one takes the lease and
        is active, the others are standbys. Without the list, the one orchestrator.

        The others start once the first answers: it has brought the store's schema up to date
        by then (two processes migrating a new store at once would race) and holds the lease."""
        endpoints = self.config().orchestrators
        if len(endpoints) < 2:
            return [self.start("orchestrator")]
        started = []
        for i, endpoint in enumerate(endpoints):
            started.append(self.start("orchestrator", name=orchestrator_name(i), extra={"orchestrator_api": endpoint}))
            if i == 0:
                with OrchestratorClient([endpoint], self.security(), timeout=ASK_TIMEOUT_S) as oc:
                    self._until(
                        lambda: _answer(oc.ping) is not None,
                        time.monotonic() + START_TIMEOUT_S,
                        "the first orchestrator",
                    )
        return started

    def proc(self, name: str) -> ServiceProc:
        """The most recent process started under ``name``."""
        for p in reversed(self.procs):
            if p.name == name:
                return p
        raise KeyError(f"no service named {name!r} was started")

    def current(self) -> dict[str, ServiceProc]:
        """The most recent process of every name."""
        return {p.name: p for p in self.procs}

    def check_alive(self) -> None:
        """Raise StackError if a current service exited without being stopped."""
        for name, p in self.current().items():
            if not p.stopped and p.poll() is not None:
                raise StackError(f"{name} exited with code {p.returncode} (see {p.log_path})")

    def kill(self, name: str) -> None:
        """SIGKILL a service's process group and reap it."""
        p = self.proc(name)
        p.stopped = True
        p.signal_group(signal.SIGKILL)
        p.wait(10)

    def restart(self, name: str, extra: Mapping[str, Any] | None = None) -> ServiceProc:
        """SIGKILL a service if it runs, then start it as before (``extra`` replaces its extra
        settings if given) from the tree as it is now."""
        launch = self.proc(name).launch
        self.kill(name)
        return self._spawn(launch if extra is None else replace(launch, extra=dict(extra)))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every running service, SIGKILL what still runs after ``grace`` s (0: SIGKILL at once)."""
        running = [p for p in self.procs if p.poll() is None]
        for p in running:
            p.stopped = True
            p.signal_group(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for p in running:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.signal_group(signal.SIGKILL)
                p.wait()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ readiness
    def wait_ready(self, agents: int = 0, ids: Collection[str] = (), timeout: float = START_TIMEOUT_S) -> None:
        """Until the master lists at least ``agents`` live agents, ``ids`` among them, and a
        started orchestrator answers a ping. A service that exits meanwhile fails at once."""
        deadline = time.monotonic() + timeout
        want = set(ids)
        with MasterClient([self.endpoint("master_clients")], self.security(), timeout=ASK_TIMEOUT_S) as mc:

            def listed() -> bool:
                infos = _answer(mc.agents)
                if infos is None:
                    return False
                alive = {a.agent_id for a in infos if a.alive}
                return len(alive) >= agents and want <= alive

            self._until(listed, deadline, "the master to list the agents")
        for name, p in self.current().items():
            if p.service != "orchestrator":
                continue
            endpoint = self.config(p.launch.extra).endpoint("orchestrator_api")
            with OrchestratorClient([endpoint], self.security(), timeout=ASK_TIMEOUT_S) as oc:
                self._until(lambda: _answer(oc.ping) is not None, deadline, f"{name} to answer")
        started = {p.service for p in self.current().values()}
        cfg = self.config()
        for service, ready in READY.items():
            if service in started:
                self._until(partial(ready, cfg), deadline, f"the {service} to answer")

    def _until(self, pred: Callable[[], bool], deadline: float, what: str) -> None:
        def alive_and() -> bool:
            self.check_alive()
            return pred()

        wait_for(alive_and, max(0.0, deadline - time.monotonic()), f"{what} (logs in {self.log_dir})", POLL_S)


def _web_ready(cfg: cfgmod.Config) -> bool:
    try:
        with urllib.request.urlopen(cfg.web_url() + "healthz", timeout=ASK_TIMEOUT_S) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# Services that are not asked over the bus: service -> "does it answer yet?".
READY: dict[str, Callable[[cfgmod.Config], bool]] = {"web": _web_ready}
# Where people reach a service: name -> its address, printed by `up` and `demo`.
PEOPLE_URLS: dict[str, Callable[[cfgmod.Config], str]] = {"web": lambda cfg: cfg.web_url()}


def orchestrator_name(i: int) -> str:
    """The stack's name of its ``i``-th orchestrator (0: the one a single-orchestrator stack has)."""
    return "orchestrator" if i == 0 else f"orchestrator-{i + 1}"


def notify_wanted(tree: Mapping[str, Any]) -> bool:
    """Whether a stack of these settings runs the notifier: when [notify] names a receiver."""
    return bool(tree.get("notify", {}).get("receivers"))


def password_variables(tree: Mapping[str, Any]) -> set[str]:
    """The environment variables that hold a workspace password (``password_env``) in ``tree``."""
    workspaces = tree.get("orchestrator", {}).get("workspaces", {})
    return {ws["password_env"] for ws in workspaces.values() if ws.get("password_env")}


def _answer(ask: Callable[[], T]) -> T | None:
    try:
        return ask()
    except RequestError:
        return None
