"""Job commands: submit, status, tail, resume, cancel, retry (all through the orchestrator API)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click
import msgspec

from common import protocol as P
from common.rpc import OrchestratorClient, RequestError
from p4bus.cli import Ctx, UserError
from p4bus.render import LogPrinter, console, job_detail, jobs_table
from p4bus.tailer import JobTail

T = TypeVar("T")


def _client(obj: Ctx) -> OrchestratorClient:
    return OrchestratorClient([obj.cfg().endpoint("orchestrator_api")], obj.security(), timeout=5.0)


def _call(obj: Ctx, fn: Callable[[OrchestratorClient], T]) -> T:
    with _client(obj) as oc:
        try:
            return fn(oc)
        except RequestError as exc:
            raise UserError(exc.message, 2 if exc.code in ("bad_request", "unknown_job") else 1) from None


def _print_json(value: object) -> None:
    click.echo(msgspec.json.encode(value).decode())


def follow(obj: Ctx, job_id: str) -> P.JobView:
    """Stream a job's output until it ends or waits for a person; print its timeline."""
    printer = LogPrinter(sys.stdout.buffer, color=sys.stdout.isatty())
    last: list[str] = []

    def on_state(ev: P.JobChanged) -> None:
        # Stage moves show in the command headers; a note is for a new job state.
        if not last or last[-1] != ev.state:
            last.append(ev.state)
            printer.note(f"{ev.job_id} {ev.state} at {ev.stage}")

    tail = JobTail(obj.cfg(), job_id, printer, on_state=on_state)
    try:
        view = tail.follow()
    except RequestError as exc:
        raise UserError(exc.message) from None
    finally:
        tail.close()
    job_detail(console(), view)
    return view


def _exit_for(view: P.JobView) -> None:
    sys.exit({"DONE": 0, "NOTHING_TO_DO": 0, "WAITING_RESOLVE": 3, "WAITING_APPROVAL": 3}.get(view.state, 1))


@click.command()
@click.option("--source", help="Depot path to integrate from, e.g. //depot/dev/...")
@click.option("--target", help="Depot path to integrate into, e.g. //depot/main/...")
@click.option("--branch-spec", help="Integrate through this branch spec instead of --source/--target.")
@click.option("--change", type=click.IntRange(min=1), help="Source change to integrate up to (default: latest).")
@click.option("--workspace", help="Configured workspace to run in (default: the only one).")
@click.option("--agent", help="Run on this agent.")
@click.option("--pool", help="Run on an agent of this pool.")
@click.option("--desc", default="", help="Description of the pending change.")
@click.option("--follow", "do_follow", is_flag=True, help="Stream the job's output until it ends or waits.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_obj
def submit(
    obj: Ctx,
    source: str | None,
    target: str | None,
    branch_spec: str | None,
    change: int | None,
    workspace: str | None,
    agent: str | None,
    pool: str | None,
    desc: str,
    do_follow: bool,
    as_json: bool,
) -> None:
    """Submit an integration job; prints its id."""
    if branch_spec and (source or target):
        raise UserError("give either --branch-spec or --source and --target, not both", 2)
    if not branch_spec and not (source and target):
        raise UserError("give --source and --target (or --branch-spec)", 2)
    view = _call(
        obj,
        lambda oc: oc.submit(
            source=source,
            target=target,
            branch_spec=branch_spec,
            change=change,
            workspace=workspace,
            agent=agent,
            pool=pool,
            desc=desc,
        ),
    )
    if as_json:
        _print_json(view)
    else:
        click.echo(view.job_id)
    if do_follow:
        _exit_for(follow(obj, view.job_id))


@click.command()
@click.argument("job_id", required=False)
@click.option("--all", "include_all", is_flag=True, help="Include finished jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: Ctx, job_id: str | None, include_all: bool, as_json: bool) -> None:
    """A table of jobs, or one job's stage timeline."""
    if job_id:
        view = _call(obj, lambda oc: oc.job(job_id))
        _print_json(view) if as_json else job_detail(console(), view)
        return
    jobs = _call(obj, lambda oc: oc.jobs(include_all))
    if as_json:
        _print_json(jobs)
    elif jobs:
        console().print(jobs_table(jobs))
    else:
        click.echo("no active jobs" + ("" if include_all else " (--all shows finished ones)"))


@click.command()
@click.argument("job_id")
@click.pass_obj
def tail(obj: Ctx, job_id: str) -> None:
    """The job's whole output so far, then live, until it ends or waits for a resolve."""
    _exit_for(follow(obj, job_id))


@click.command()
@click.argument("job_id")
@click.option("--follow", "do_follow", is_flag=True, help="Stream the job's output until it ends or waits.")
@click.pass_obj
def resume(obj: Ctx, job_id: str, do_follow: bool) -> None:
    """Re-check a job waiting for a resolve and continue it."""
    view = _call(obj, lambda oc: oc.resume(job_id))
    click.echo(f"{view.job_id} {view.state} {view.stage}")
    if do_follow:
        _exit_for(follow(obj, job_id))


@click.command()
@click.argument("job_id")
@click.option("--revert", is_flag=True, help="Also revert the job's pending change and delete it.")
@click.pass_obj
def cancel(obj: Ctx, job_id: str, revert: bool) -> None:
    """Cancel a job: its running command's process group is killed."""
    view = _call(obj, lambda oc: oc.cancel(job_id, revert))
    click.echo(f"{view.job_id} {view.state}")


@click.command()
@click.argument("job_id")
@click.option("--from", "from_stage", help="Stage to restart from (default: where it stopped).")
@click.option("--follow", "do_follow", is_flag=True)
@click.pass_obj
def retry(obj: Ctx, job_id: str, from_stage: str | None, do_follow: bool) -> None:
    """Run a failed or cancelled job again."""
    view = _call(obj, lambda oc: oc.retry(job_id, from_stage))
    click.echo(f"{view.job_id} {view.state} {view.stage}")
    if do_follow:
        _exit_for(follow(obj, job_id))


COMMANDS = [submit, status, tail, resume, cancel, retry]
