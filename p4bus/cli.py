"""The p4bus command line: one small module per command under p4bus/commands/."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from common import auth, logs
from common import config as cfgmod
from common.auth import Security
from common.rpc import RequestError, RpcClient

T = TypeVar("T")

# Exit codes, the same for every command (README "Exit codes"; `p4bus run` exits with its
# command's own code instead, as a shell does).
EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job failed or was cancelled; or the request was refused
EXIT_USAGE = 2  # bad flags or input, unknown or ambiguous job, unknown stage
EXIT_WAITING = 3  # the job waits for a person (a resolve)
EXIT_UNREACHABLE = 4  # a service did not answer
EXIT_CODES_HELP = (
    "JOB is a job id in any case, or a unique end of it (14, 0014, 1201-0014).\n\n"
    "Exit codes: 0 ok; 1 the job failed or was cancelled, or a service refused the request; "
    "2 bad usage or input (unknown or ambiguous job id, unknown stage); "
    "3 the job waits for a person to resolve; 4 a service did not answer. "
    "`p4bus run` exits with its command's exit code."
)
# How long a service has to answer a ping before it is called down: a person waits at most this.
PING_TIMEOUT_S = 2.0
# Request codes that mean the person asked for something that cannot be (not a fault).
_USAGE_CODES = ("bad_request", "unknown_job", "no_agent", "unknown_cmd")


class Ctx:
    """What every command gets: the loaded configuration (lazily, so --help needs none)."""

    def __init__(self, config_path: str | None, overrides: dict[str, Any]) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self._cfg: cfgmod.Config | None = None

    def cfg(self, **more: Any) -> cfgmod.Config:
        if self._cfg is None or more:
            self._cfg = cfgmod.load(self.config_path, self._with(more))
        return self._cfg

    def tree(self, **more: Any) -> dict[str, Any]:
        """The layered settings behind cfg(**more), unvalidated (for writing them to a file)."""
        return cfgmod.read_tree(self.config_path, self._with(more))

    def security(self) -> Security | None:
        """The operator's key (P4BUS_KEY, or [security] key in the keys directory)."""
        return auth.for_client(self.cfg())

    def use(self, cfg: cfgmod.Config) -> None:
        """Point the commands that follow at this configuration (a stack the command started)."""
        self._cfg = cfg

    def _with(self, more: dict[str, Any]) -> dict[str, Any]:
        return cfgmod.deep_merge(self.overrides, cfgmod.flag_overrides(**more))


class P4busGroup(click.Group):
    """Turns expected failures into one precise line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except cfgmod.ConfigError as exc:
            click.echo(f"p4bus: config error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except UserError as exc:
            click.echo(f"p4bus: {exc}", err=True)
            sys.exit(exc.exit_code)


class UserError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_JOB_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def request_failed(service: str, exc: RequestError) -> UserError:
    """A failed request as one line that names the service, with the exit code it means."""
    if exc.code == "timeout":
        return UserError(
            f"the {service} did not answer ({exc.message.removeprefix('no answer: ')}); "
            f"is it running? (`p4bus {service}` or `p4bus up`)",
            EXIT_UNREACHABLE,
        )
    return UserError(exc.message, EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_JOB_FAILED)


def ask(service: str, client: RpcClient, fn: Callable[[], T]) -> T:
    """``fn()`` against a service that answered a ping within PING_TIMEOUT_S: a service that is
    down is said within that time, by name, instead of after the request's own timeout."""
    try:
        client.ping(timeout=PING_TIMEOUT_S)
    except RequestError as exc:
        if exc.code != "timeout":
            raise request_failed(service, exc) from None
        where = ", ".join(client.endpoints)
        raise UserError(
            f"the {service} did not answer within {PING_TIMEOUT_S:g}s at {where}: it is down or "
            f"unreachable (start it with `p4bus {service}` or `p4bus up`)",
            EXIT_UNREACHABLE,
        ) from None
    try:
        return fn()
    except RequestError as exc:
        raise request_failed(service, exc) from None


@click.group(cls=P4busGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option(
    "--config",
    "config_path",
    envvar=cfgmod.CONFIG_ENV,
    type=click.Path(dir_okay=False),
    help="TOML config file (also P4BUS_CONFIG).",
)
@click.option("--port-base", type=int, default=None, help="Base port of the default endpoints (default 9090).")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, port_base: int | None, log_level: str | None) -> None:
    """p4bus: Perforce integration jobs on remote workspaces over a ZeroMQ bus."""
    ctx.obj = Ctx(config_path, cfgmod.flag_overrides(port_base=port_base, log_level=log_level))


def main() -> None:
    from p4bus.commands import register

    register(cli)
    cli(prog_name="p4bus")


def configure_logging(cfg: cfgmod.Config, service: str) -> None:
    logs.setup(cfg.log_level, service=service)
