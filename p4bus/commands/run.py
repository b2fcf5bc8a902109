"""`p4bus run [--agent ID | --pool P] [--cwd DIR] [--timeout S] -- CMD ARGS...`"""

from __future__ import annotations

import signal
import sys

import click

from common import protocol as P
from common.rpc import MasterClient
from p4bus.cli import Ctx, UserError, ask
from p4bus.runner import exit_code_of, run_command


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--agent", default=None, help="Run on this agent id.")
@click.option("--pool", default=None, help="Run on the least busy agent of this pool.")
@click.option("--cwd", default=None, help="Working directory on the agent (inside its workspace roots).")
@click.option("--timeout", type=float, default=None, help="Seconds before the command's process group is ended.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run(
    obj: Ctx, agent: str | None, pool: str | None, cwd: str | None, timeout: float | None, argv: tuple[str, ...]
) -> None:
    """Run a command on an agent, streaming its output live; exits with its exit code.

    Ctrl-C kills the remote process group.
    """
    cfg = obj.cfg()
    out = {P.STDOUT: sys.stdout.buffer, P.STDERR: sys.stderr.buffer}

    def sink(stream: int, data: bytes) -> None:
        f = out[stream]
        f.write(data)
        f.flush()

    interrupted: list[int] = []
    started: list[P.ExecReply] = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))

    with MasterClient(cfg.client_masters(), obj.security()) as mc:

        def on_tick() -> None:
            if len(interrupted) == 1 and started:
                interrupted.append(1)  # kill once
                mc.kill(started[0].cmd_id, agent=started[0].agent)

        result = ask(
            "master",
            mc,
            lambda: run_command(
                mc,
                cfg.broker_xpubs(),  # a chunk from each broker: the output's offsets drop the copies
                P.CmdSpec(argv=list(argv), cwd=cwd, timeout=timeout),
                sink,
                agent=agent,
                pool=pool,
                on_started=started.append,
                on_tick=on_tick,
            ),
        )
    if result.status.error:
        raise UserError(f"agent {result.agent} refused the command: {result.status.error}", exit_code_of(result.status))
    sys.exit(exit_code_of(result.status))


COMMANDS = [run]
