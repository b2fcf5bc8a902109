"""Jobs that leave no mess: `cleanup` reverts a failed or cancelled job's pending change;
`approve` lets a job that waits for a review submit its shelf."""

from __future__ import annotations

import shlex

import click

from p4bus.cli import Ctx
from p4bus.commands.jobs import JOB, _on_job


@click.command()
@JOB
@click.pass_obj
def cleanup(obj: Ctx, job_id: str) -> None:
    """Revert a FAILED or CANCELLED job's opened files and delete its pending change and shelf.

    The commands run through the job's agent and are recorded as the job's own (CLEANUP in
    `p4bus status JOB`); the workspace's next job waits until they are done."""
    view = _on_job(obj, job_id, lambda oc, jid: oc.cleanup(jid))
    commands = [r for r in view.timeline if r.stage == "CLEANUP" and r.state not in ("DONE", "LOST", "CANCELLED")]
    argv = "; ".join(shlex.join(["p4", *r.argv[1:]]) for r in commands)
    click.echo(f"{view.job_id} {view.state}: cleaning up: {argv}")
    click.echo(f"`p4bus status {view.job_id}` shows how they end")


@click.command()
@JOB
@click.pass_obj
def approve(obj: Ctx, job_id: str) -> None:
    """Let a job waiting for approval (review_before_submit) submit the shelf you reviewed."""
    view = _on_job(obj, job_id, lambda oc, jid: oc.approve(jid))
    click.echo(f"{view.job_id} {view.state} {view.stage}")


COMMANDS = [cleanup, approve]
