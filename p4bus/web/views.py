"""What the pages show, as pure functions of the orchestrator's and masters' answers."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from common import protocol as P
from common.config import WorkspaceConf
from p4bus.render import age, duration

__all__ = ["Action", "actions", "age", "duration", "filter_jobs", "queues", "resolve_steps"]

TERMINAL = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Action:
    name: str  # the URL's last segment
    label: str
    confirm: str = ""  # asked in the browser before a destructive action


def actions(job: P.JobView) -> list[Action]:
    """What may be asked of this job in its state (the orchestrator has the last word)."""
    out = []
    if job.state == "WAITING_RESOLVE":
        out.append(Action("resume", "Resume"))
    if job.state == "WAITING_APPROVAL":
        out.append(Action("approve", "Approve and submit", f"Submit the shelved change {job.change} of {job.job_id}?"))
    if job.state not in TERMINAL:
        out.append(Action("cancel", "Cancel", f"Cancel {job.job_id}?"))
        if job.change:
            out.append(Action("revert", "Cancel and revert", f"Cancel {job.job_id} and revert change {job.change}?"))
    if job.state in ("FAILED", "CANCELLED"):
        out.append(Action("retry", "Retry"))
        if job.change:
            out.append(Action("cleanup", "Clean up", f"Revert and delete pending change {job.change} of {job.job_id}?"))
    return out


def stages(job: P.JobView) -> list[str]:
    """The stages this job has run, in order: the choices of "retry from"."""
    seen: list[str] = []
    for run in job.timeline:
        if run.stage not in seen and run.stage != "CLEANUP":
            seen.append(run.stage)
    return seen


def filter_jobs(jobs: list[P.JobView], state: str, workspace: str) -> list[P.JobView]:
    return [j for j in jobs if (not state or j.state == state) and (not workspace or j.workspace == workspace)]


def queues(jobs: list[P.JobView]) -> dict[str, list[P.JobView]]:
    """Workspace -> its queued jobs by position."""
    out: dict[str, list[P.JobView]] = {}
    for j in sorted((j for j in jobs if j.state == "QUEUED"), key=lambda j: j.queue_position):
        out.setdefault(j.workspace, []).append(j)
    return out


def resolve_steps(job: P.JobView, ws: WorkspaceConf | None, host: str) -> list[str]:
    """Exactly what a person runs to resolve the job's conflicts, and where."""
    if ws is None:
        return [f"workspace {job.workspace} is not in this dashboard's configuration: ask its owner"]
    where = f"on {host} (agent {job.agent})" if host else f"on the host of agent {job.agent or '?'}"
    env = f"P4PORT={shlex.quote(ws.p4port)} P4USER={shlex.quote(ws.p4user)} P4CLIENT={shlex.quote(ws.p4client)}"
    return [
        f"# {where}:",
        f"cd {shlex.quote(ws.root)}",
        f"export {env}",
        "p4 resolve -n            # the files below, still to resolve",
        "p4 resolve -am           # accept what merges cleanly",
        "p4 resolve FILE          # each file left: merge by hand, edit, accept",
        "p4 resolve -n            # nothing left: press Resume (or `p4bus resume " + job.job_id + "`)",
    ]


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
