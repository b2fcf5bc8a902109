"""`p4bus demo`: a whole integration story against a p4sim depot, live, in a temp directory.

A conflicting integration waits for a person, is resolved the way a person would
(`p4 resolve -at` in the workspace), resumed and submitted; then a clean one goes straight
through. Everything runs on loopback and is removed afterwards; with ``--serve`` the stack and
its dashboard stay up (a login token is printed) until Ctrl-C, to look around.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.text import Text

from common.config import WEB_PORT_OFFSET
from common.rpc import OrchestratorClient
from common.zmqutil import free_port_base
from p4bus.cli import Ctx, UserError
from p4bus.commands.jobs import follow
from p4bus.harness.stack import SERVICES, Stack, StackError
from p4bus.harness.workspaces import agent_settings, orchestrator_settings, p4sim_path, seed_workspace
from p4bus.render import console as text_console
from p4bus.web.tokens import TokenFile


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs, depots, store) afterwards.")
@click.option("--serve", is_flag=True, help="Keep the stack and the dashboard running after the jobs, until Ctrl-C.")
@click.pass_obj
def demo(obj: Ctx, keep: bool, serve: bool) -> None:
    """Run a conflicting and a clean integration job end to end against p4sim."""
    console = text_console()
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="p4bus-demo-"))
    console.rule(Text("p4bus demo", style="bold"))
    console.print(f"working in {tmp}")
    seeds = {name: seed_workspace(tmp / name, name, scenario=name) for name in ("conflict", "clean")}
    path = p4sim_path(tmp / "bin")
    tree = {
        "state_dir": str(tmp / "state"),
        "port_base": free_port_base(WEB_PORT_OFFSET + 1),
        "agent": agent_settings(seeds.values()),
        "orchestrator": {"workspaces": orchestrator_settings(seeds.values())},
    }
    stack = Stack(tree, tmp, log_dir=tmp / "logs", env={"PATH": path})
    obj.use(stack.config())  # the job commands below talk to this stack
    summary = []
    try:
        console.print(f"starting {', '.join(SERVICES)} on loopback ...")
        for service in SERVICES:
            stack.start(service)
        stack.wait_ready(agents=1)
        cfg = stack.config()
        token = TokenFile(cfg.web_tokens_path).add("demo", "operator")
        console.print(f"dashboard: {cfg.web_url()}  (log in with the token {token})")
        metrics = (f"{name} {stack.metrics_url(name)}" for name in stack.current())
        console.print(f"metrics (and /health): {', '.join(metrics)}")
        with OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security()) as oc:
            ws = seeds["conflict"]
            info = ws.facts
            console.rule("1. an integration with a real conflict")
            job = oc.submit(
                workspace="conflict", source=info["source"], target=info["target"], desc="demo: integrate dev to main"
            )
            console.print(Text.assemble("submitted ", (job.job_id, "bold"), f": {info['source']} -> {info['target']}"))
            view = follow(obj, job.job_id)
            if view.state != "WAITING_RESOLVE":
                raise UserError(f"expected the job to wait for a resolve, it is {view.state}: {view.reason}")
            console.rule("a person resolves it in the workspace")
            argv = ["p4", "resolve", "-at"]
            console.print(f"$ cd {ws.root} && {' '.join(argv)}")
            p4env = {**os.environ, "PATH": path, **ws.p4_env()}
            done = subprocess.run(argv, cwd=ws.root, env=p4env, capture_output=True, text=True)
            sys.stdout.write(done.stdout + done.stderr)
            console.print(f"$ p4bus resume {job.job_id}")
            view = follow(obj, job.job_id, after=oc.resume(job.job_id))
            summary.append(view)
            console.rule("2. a clean integration goes straight through")
            info = seeds["clean"].facts
            job2 = oc.submit(workspace="clean", source=info["source"], target=info["target"], desc="demo: clean")
            console.print(Text.assemble("submitted ", (job2.job_id, "bold")))
            summary.append(follow(obj, job2.job_id))
        console.rule("summary")
        for v in summary:
            console.print(
                f"{v.job_id}  {v.state:15} submitted change {v.submitted_change}  ({len(v.timeline)} commands)"
            )
        console.print(f"demo took {time.monotonic() - t0:.1f}s")
        if any(v.state != "DONE" for v in summary):
            raise UserError("a demo job did not reach DONE; logs are in " + str(tmp / "logs"))
        if serve:
            console.print(f"serving the dashboard at {cfg.web_url()} (token {token}); Ctrl-C stops everything")
            _until_interrupted(stack)
    except StackError as exc:
        keep = True
        raise UserError(f"{exc} (kept {tmp})") from None
    finally:
        stack.stop()
        if keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _until_interrupted(stack: Stack) -> None:
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        stack.check_alive()
        time.sleep(0.2)


COMMANDS = [demo]
