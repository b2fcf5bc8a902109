"""`p4bus up`: broker, master, orchestrator, one local agent and the dashboard on loopback until Ctrl-C.

Secure by default: the first run creates the services' keys and an operator key in
``<state_dir>/keys`` (the harness does), so other local users cannot use the bus.

A service that dies is started again after a backoff (doubling from FIRST_BACKOFF_S up to
MAX_BACKOFF_S; a service that had run STABLE_S is back to the first), each exit and restart
said on stderr: one crash does not stop the stack, and a crash loop does not spin."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import click

from common import keys, lifecycle
from common.config import PORT_OFFSETS, AgentConf, Config, deep_merge
from p4bus.cli import Ctx, UserError
from p4bus.harness.stack import PEOPLE_URLS, SERVICES, Stack, StackError, notify_wanted

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0


def backoff(failures: int) -> float:
    """Seconds before restart number ``failures`` (1, 2, ...) of a service in a row."""
    return min(FIRST_BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S)


class Supervisor:
    """Restarts the stack's services that exit without being stopped, with backoff."""

    def __init__(self, stack: Stack, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.stack = stack
        self.say = say
        self.clock = clock
        now = clock()
        self.started = dict.fromkeys(stack.current(), now)
        self.failures: dict[str, int] = {}
        self.due: dict[str, float] = {}  # name -> when it is started again

    def poll(self) -> None:
        now = self.clock()
        for name, p in self.stack.current().items():
            if p.stopped or p.poll() is None:
                continue
            if name not in self.due:
                ran = now - self.started.get(name, now)
                self.failures[name] = 1 if ran >= STABLE_S else self.failures.get(name, 0) + 1
                delay = backoff(self.failures[name])
                self.due[name] = now + delay
                self.say(
                    f"{name} exited with code {p.returncode} after {ran:.0f}s; "
                    f"restarting it in {delay:g}s (log: {p.log_path})"
                )
            elif now >= self.due[name]:
                del self.due[name]
                fresh = self.stack.restart(name)
                self.started[name] = now
                self.say(f"{name} restarted (pid {fresh.pid}, log: {fresh.log_path})")


@click.command()
@click.option("--state-dir", default=None, help="Where journal, spools and logs live (default ~/.p4bus).")
@click.option(
    "--port-base",
    "up_port_base",
    type=int,
    default=None,
    help="First of 13 consecutive ports (bus, dashboard, metrics).",
)
@click.option("--workspace-root", multiple=True, help="Directory the local agent may run commands in (repeatable).")
@click.option(
    "--brokers",
    "n_brokers",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Replicated brokers to start (each gets every event; the extra ones on free ports).",
)
@click.pass_obj
def up(
    obj: Ctx, state_dir: str | None, up_port_base: int | None, workspace_root: tuple[str, ...], n_brokers: int
) -> None:
    """Start every service on loopback; Ctrl-C stops them cleanly."""
    cfg = obj.cfg(state_dir=state_dir, port_base=up_port_base)
    # Before anything is written: the logs and config files below are created by this process.
    lifecycle.private_state(cfg.state_path)
    roots = list(workspace_root) or cfg.agent.workspace_roots or [str(cfg.state_path / "work")]
    for r in roots:
        Path(r).mkdir(parents=True, exist_ok=True)
    agent: dict[str, object] = {"workspace_roots": roots}
    if cfg.agent.allowed_executables == AgentConf().allowed_executables:
        # A development stack on one's own machine: any executable, as `p4bus run` promises.
        agent["allowed_executables"] = ["*"]
    tree = deep_merge(obj.tree(state_dir=state_dir, port_base=up_port_base), {"agent": agent})
    # Metrics on the settings' ports (port_base + 7...), where an operator's Prometheus finds them.
    stack = Stack(tree, cfg.state_path, log_dir=cfg.state_path / "logs", config_prefix="up", free_metrics=False)
    replicas = stack.replicate_brokers(n_brokers) if n_brokers > 1 else {}
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        for service in SERVICES:
            if service == "broker" and replicas:
                for name, extra in replicas.items():
                    stack.start(service, name=name, extra=extra)
            elif service == "orchestrator":
                stack.start_orchestrators()  # several when `orchestrators` lists several: standbys
            else:
                stack.start(service)
        if notify_wanted(tree):
            stack.start("notify")
        stack.wait_ready(agents=1)
        click.echo("p4bus is up:")
        for name in PORT_OFFSETS:
            click.echo(f"  {name:16} {cfg.endpoint(name)}")
        for i, b in enumerate(stack.config().bus_brokers()[1:], start=2):
            click.echo(f"  broker-{i:<9} {b.xsub} {b.xpub} {b.replay}")
        if len(cfg.orchestrators) > 1:
            click.echo(f"  {'orchestrators':16} {', '.join(cfg.orchestrators)}  (one active, the others standbys)")
        for name, url in PEOPLE_URLS.items():
            click.echo(f"  {name:16} {url(cfg)}")
        for name in stack.current():
            click.echo(f"  {name + ' metrics':16} {stack.metrics_url(name) or 'off'}  (and /health)")
        click.echo(f"  state dir        {cfg.state_path}  (logs in {cfg.state_path / 'logs'})")
        click.echo(f"  workspace roots  {', '.join(roots)}")
        click.echo(
            f"  notifications    {', '.join(sorted(cfg.notify.receivers))}"
            if notify_wanted(tree)
            else "  notifications    off (no [notify.receivers] in the settings)"
        )
        key = "" if cfg.insecure else str(keys.secret_path(cfg.keys_path, "operator"))
        if key:
            click.echo(f"  operator key     {key}")
        # The CLI finds the operator key by itself under the default state dir; elsewhere it is told.
        prefix = f"P4BUS_KEY={key} " if key and cfg.keys_path != Config().keys_path else ""
        # Tokens live in the state dir: elsewhere than the default, the command is told where.
        tokens_prefix = f"P4BUS_STATE_DIR={cfg.state_path} " if cfg.state_path != Config().state_path else ""
        click.echo(
            f"Dashboard: {cfg.web_url()}  (a login token: {tokens_prefix}p4bus web token add NAME --role operator)"
        )
        click.echo(f"Try: {prefix}p4bus --port-base {cfg.port_base} run -- echo hello   (Ctrl-C here stops everything)")
        supervisor = Supervisor(stack, lambda line: click.echo(f"p4bus up: {line}", err=True))
        while not stop:
            supervisor.poll()
            time.sleep(0.2)
    except StackError as exc:
        raise UserError(str(exc)) from None
    finally:
        stack.stop()
        click.echo("p4bus stopped.")


COMMANDS = [up]
