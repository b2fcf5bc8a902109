"""The p4bus command line: one small module per command under p4bus/commands/."""

from __future__ import annotations

import sys
from typing import Any

import click

from common import auth, logs
from common import config as cfgmod
from common.auth import Security


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
            sys.exit(2)
        except UserError as exc:
            click.echo(f"p4bus: {exc}", err=True)
            sys.exit(exc.exit_code)


class UserError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@click.group(cls=P4busGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
