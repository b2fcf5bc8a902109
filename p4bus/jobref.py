"""Job ids and stage names as people type them, and shell completion of both (and workspaces).

A job may be named by its whole id in any case, or by a unique end of it: `0014`, `14` (digits
name the job's number, the one counted 14th on any day) or `1201-0014`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click
from click.shell_completion import CompletionItem

from common import config as cfgmod
from common.rpc import OrchestratorClient, RequestError
from p4bus.cli import EXIT_USAGE, UserError
from p4bus.render import pipeline_stages

T = TypeVar("T")
# Jobs searched for a suffix (newest first, finished ones too).
SEARCH_LIMIT = 1000
# Completion must never keep a shell waiting.
COMPLETE_TIMEOUT_S = 1.0


def matches(given: str, job_ids: list[str]) -> list[str]:
    """The ids ``given`` names: the one equal to it in any case, else every id it ends."""
    want = given.strip().upper()
    if not want:
        return []
    exact = [j for j in job_ids if j.upper() == want]
    if exact:
        return exact
    if want.isdigit():
        return [j for j in job_ids if _number(j) == int(want)]
    return [j for j in job_ids if j.upper().endswith(want)]


def _number(job_id: str) -> int | None:
    tail = job_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def resolve(oc: OrchestratorClient, given: str) -> str:
    """The one job ``given`` names (UserError, exit 2, if none or several)."""
    try:
        return oc.job(given.strip().upper()).job_id
    except RequestError as exc:
        if exc.code != "unknown_job":
            raise
    found = matches(given, [j.job_id for j in oc.jobs(True, limit=SEARCH_LIMIT)])
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no job {given!r} (`p4bus status --all` lists them)", EXIT_USAGE)
    raise UserError(f"{given!r} names {len(found)} jobs: {', '.join(found)}; give more of the id", EXIT_USAGE)


def stage_name(given: str | None, pipeline: str = "p4-integrate") -> str | None:
    """A stage name in any case as the pipeline spells it (unknown ones pass on for the
    orchestrator to refuse with the list of stages)."""
    if given is None:
        return None
    known = {s.upper(): s for s in pipeline_stages(pipeline)}
    return known.get(given.strip().upper(), given.strip().upper())


# ------------------------------------------------------------------------ shell completion


def _config(ctx: click.Context) -> cfgmod.Config:
    """The configuration the command line names (completion runs no group callback)."""
    root = ctx.find_root().params
    return cfgmod.load(root.get("config_path"), cfgmod.flag_overrides(port_base=root.get("port_base")))


def _quietly(ask: Callable[[], list[T]]) -> list[T]:
    try:
        return ask()
    except Exception:  # completion offers nothing rather than a traceback in the shell
        return []


def complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    def ask() -> list[CompletionItem]:
        from common import auth

        cfg = _config(ctx)
        endpoint = cfg.client_orchestrators()
        with OrchestratorClient(endpoint, auth.for_client(cfg), timeout=COMPLETE_TIMEOUT_S) as oc:
            jobs = oc.jobs(True, limit=SEARCH_LIMIT)
        start = [j for j in jobs if j.job_id.upper().startswith(incomplete.upper())]
        found = start or [j for j in jobs if j.job_id in matches(incomplete, [j.job_id for j in jobs])]
        return [CompletionItem(j.job_id, help=f"{j.state} {j.workspace}") for j in found]

    return _quietly(ask)


def complete_stage(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(s) for s in pipeline_stages("p4-integrate") if s.upper().startswith(incomplete.upper())]


def complete_workspace(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    def ask() -> list[CompletionItem]:
        names = _config(ctx).orchestrator.workspaces
        return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]

    return _quietly(ask)
