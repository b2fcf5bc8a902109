"""Job commands: submit, status, tail, resume, cancel, retry (all through the orchestrator API)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click
import msgspec

from common import protocol as P
from common.rpc import OrchestratorClient, RequestError
from p4bus import jobref
from p4bus.cli import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, EXIT_WAITING, Ctx, UserError, ask, request_failed
from p4bus.progress import ProgressPrinter, summary
from p4bus.render import END_STATES, LogPrinter, console, job_detail, jobs_table, print_grid
from p4bus.tailer import JobTail, Printer

T = TypeVar("T")
SERVICE = "orchestrator"


def _client(obj: Ctx) -> OrchestratorClient:
    return OrchestratorClient(obj.cfg().client_orchestrators(), obj.security(), timeout=5.0)


def _call(obj: Ctx, fn: Callable[[OrchestratorClient], T]) -> T:
    with _client(obj) as oc:
        return ask(SERVICE, oc, lambda: fn(oc))


def _on_job(obj: Ctx, given: str, fn: Callable[[OrchestratorClient, str], T]) -> T:
    """``fn(client, job id)`` for the job ``given`` names (a unique suffix, any case)."""
    return _call(obj, lambda oc: fn(oc, jobref.resolve(oc, given)))


def _job_id(obj: Ctx, given: str) -> str:
    return _on_job(obj, given, lambda _oc, job_id: job_id)


def _print_json(value: object) -> None:
    click.echo(msgspec.json.encode(value).decode())


def follow(
    obj: Ctx, job_id: str, log: bool = False, only_stage: str | None = None, after: P.JobView | None = None
) -> P.JobView:
    """Follow a job until it ends or waits for a person: one progress line per stage (or, with
    ``log``, its byte-exact output and then its timeline; ``only_stage``: that stage's output
    alone). ``after``: the view a resume or retry answered; what it had finished is not shown."""
    printer: Printer
    compact: ProgressPrinter | None = None
    if log or only_stage:
        printer = LogPrinter(sys.stdout.buffer, sys.stdout.isatty(), only_stage, notes=sys.stderr.buffer)
    else:
        printer = compact = ProgressPrinter(sys.stdout, live=sys.stdout.isatty())
    last: list[str] = []
    waited: list[str] = [""]

    def on_state(ev: P.JobChanged) -> None:
        # Stage moves show in the command headers; a note is for a new job state. Compact, the
        # summary says how it ended and a stage line that it runs.
        new = not last or last[-1] != ev.state
        last.append(ev.state)
        # A running job whose command no agent takes (offline, busy) says so, once per reason.
        waiting = str(ev.detail.get("waiting_for", "")) if ev.state == "RUNNING" else ""
        if waiting and waiting != waited[-1]:
            printer.note(f"{ev.job_id} waiting for: {waiting}")
        waited.append(waiting)
        if compact is None and new:
            printer.note(f"{ev.job_id} {ev.state} at {ev.stage}")
        elif compact is not None and new and ev.state not in (*END_STATES, "RUNNING"):
            compact.end_stage()
            printer.note(f"{ev.job_id} {ev.state} at {ev.stage}")

    tail = JobTail(obj.cfg(), job_id, printer, on_state=on_state, after=after)
    try:
        view = tail.follow()
    except RequestError as exc:
        raise request_failed(SERVICE, exc) from None
    finally:
        tail.close()
    if compact is not None:
        compact.end_stage()
        for line in summary(view):
            click.echo(line)
    elif not only_stage:
        job_detail(console(), view)
    return view


def exit_code(view: P.JobView) -> int:
    waiting = {"WAITING_RESOLVE": EXIT_WAITING, "WAITING_APPROVAL": EXIT_WAITING}
    return {"DONE": EXIT_OK, "NOTHING_TO_DO": EXIT_OK, **waiting}.get(view.state, EXIT_JOB_FAILED)


def _exit_for(view: P.JobView) -> None:
    sys.exit(exit_code(view))


@click.command()
@click.option("--source", help="Depot path to integrate from, e.g. //depot/dev/...")
@click.option("--target", help="Depot path to integrate into, e.g. //depot/main/...")
@click.option("--branch-spec", help="Integrate through this branch spec instead of --source/--target.")
@click.option("--change", type=click.IntRange(min=1), help="Source change to integrate up to (default: latest).")
@click.option(
    "--workspace",
    help="Configured workspace to run in (default: the only one).",
    shell_complete=jobref.complete_workspace,
)
@click.option("--agent", help="Run on this agent.")
@click.option("--pool", help="Run on an agent of this pool.")
@click.option("--desc", default="", help="Description of the pending change.")
@click.option("--follow", "do_follow", is_flag=True, help="Show each stage's progress until the job ends or waits.")
@click.option("--log", is_flag=True, help="With --follow: every byte of the job's output instead (as `tail`).")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option("--template", help="Start from this saved template; the options given override it.")
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
    log: bool,
    as_json: bool,
    template: str | None,
) -> None:
    """Submit an integration job; prints its id."""
    if branch_spec and (source or target):
        raise UserError("give either --branch-spec or --source and --target, not both", EXIT_USAGE)
    if not template and not branch_spec and not (source and target):
        raise UserError("give --source and --target (or --branch-spec)", EXIT_USAGE)
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
            template=template,
        ),
    )
    if as_json:
        _print_json(view)
    else:
        click.echo(view.job_id)
    if do_follow:
        _exit_for(follow(obj, view.job_id, log))


JOB = click.argument("job_id", metavar="JOB", shell_complete=jobref.complete_job)


@click.command()
@click.argument("job_id", metavar="[JOB]", required=False, shell_complete=jobref.complete_job)
@click.option("--all", "include_all", is_flag=True, help="Include finished jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: Ctx, job_id: str | None, include_all: bool, as_json: bool) -> None:
    """A table of jobs, or one job's progress and stage timeline."""
    if job_id:
        view = _on_job(obj, job_id, lambda oc, jid: oc.job(jid))
        _print_json(view) if as_json else job_detail(console(), view)
        return
    jobs = _call(obj, lambda oc: oc.jobs(include_all))
    if as_json:
        _print_json(jobs)
    elif jobs:
        print_grid(console(), jobs_table(jobs))
    else:
        click.echo("no active jobs" + ("" if include_all else " (--all shows finished ones)"))


@click.command()
@JOB
@click.option(
    "--stage",
    "only_stage",
    metavar="STAGE",
    shell_complete=jobref.complete_stage,
    help="Only that stage's output (any case), no headers: for grep.",
)
@click.pass_obj
def tail(obj: Ctx, job_id: str, only_stage: str | None) -> None:
    """The job's byte-exact output so far, then live, until it ends or waits for a resolve."""
    _exit_for(follow(obj, _job_id(obj, job_id), log=True, only_stage=jobref.stage_name(only_stage)))


FOLLOW = click.option("--follow", "do_follow", is_flag=True, help="Show each stage's progress until it ends or waits.")


@click.command()
@JOB
@FOLLOW
@click.pass_obj
def resume(obj: Ctx, job_id: str, do_follow: bool) -> None:
    """Re-check a job waiting for a resolve and continue it."""
    view = _on_job(obj, job_id, lambda oc, jid: oc.resume(jid))
    click.echo(f"{view.job_id} {view.state} {view.stage}")
    if do_follow:
        _exit_for(follow(obj, view.job_id, after=view))


@click.command()
@JOB
@click.option("--revert", is_flag=True, help="Also revert the job's pending change and delete it.")
@click.pass_obj
def cancel(obj: Ctx, job_id: str, revert: bool) -> None:
    """Cancel a job: its running command's process group is killed."""
    view = _on_job(obj, job_id, lambda oc, jid: oc.cancel(jid, revert))
    click.echo(f"{view.job_id} {view.state}")


@click.command()
@JOB
@click.option(
    "--from",
    "from_stage",
    metavar="STAGE",
    shell_complete=jobref.complete_stage,
    help="Stage to restart from, any case (default: where it stopped).",
)
@FOLLOW
@click.pass_obj
def retry(obj: Ctx, job_id: str, from_stage: str | None, do_follow: bool) -> None:
    """Run a failed or cancelled job again."""
    view = _on_job(obj, job_id, lambda oc, jid: oc.retry(jid, jobref.stage_name(from_stage)))
    click.echo(f"{view.job_id} {view.state} {view.stage}")
    if do_follow:
        _exit_for(follow(obj, view.job_id, after=view))


COMMANDS = [submit, status, tail, resume, cancel, retry]
