"""What schedules and templates decide, as pure functions of their data and the time.

Times are seconds since the epoch from the orchestrator's clock (orchestrator/clock.py), passed
in, so tests move them by hand. A cron expression is read in the schedule's own time zone
(IANA name, UTC by default): "0 2 * * *" in Europe/Berlin is 02:00 there, summer and winter.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from common import protocol as P

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
# An on-change schedule asks an agent; more often than this is load on the p4 server for nothing.
MIN_POLL_S = 1.0


# ---------------------------------------------------------------------------- validation


def name_errors(kind: str, name: str) -> list[str]:
    if _NAME.match(name):
        return []
    return [
        f"{kind} name {name!r} is not valid: use up to 64 letters, digits, '_', '.' and '-' "
        f"(not first), e.g. dev-to-main"
    ]


def zone(tz: str) -> ZoneInfo:
    """The IANA time zone ``tz``; ValueError naming it when there is no such zone."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {tz!r} is not known: give an IANA name such as UTC or Europe/Berlin") from None


def schedule_errors(s: P.Schedule) -> list[str]:
    """Every problem with a schedule's definition (its template is checked by the caller)."""
    errors = name_errors("schedule", s.name)
    if bool(s.cron) == s.on_change:
        errors.append(
            f"schedule {s.name!r} needs exactly one of a cron expression (--cron) or --on-change, "
            f"{'not both' if s.on_change else 'got neither'}"
        )
    try:
        zone(s.timezone)
    except ValueError as exc:
        errors.append(str(exc))
    if s.cron and not croniter.is_valid(s.cron):
        errors.append(
            f"cron expression {s.cron!r} is not valid: five fields (minute hour day month weekday, "
            f"e.g. '0 2 * * *'), or six with seconds last (e.g. '* * * * * */10')"
        )
    if s.on_change and s.poll_s < MIN_POLL_S:
        errors.append(f"poll interval {s.poll_s:g}s is below {MIN_POLL_S:g}s: poll less often (--poll 60)")
    return errors


# ---------------------------------------------------------------------------- when


def next_cron(expr: str, tz: str, after: float) -> float:
    """The first time strictly after ``after`` that the expression names, in zone ``tz``."""
    start = datetime.fromtimestamp(after, zone(tz))
    return float(croniter(expr, start).get_next(float))


def first_run(s: P.Schedule, now: float) -> float:
    """When a new (or changed) schedule is first due: its next cron time, or at once to poll."""
    return next_cron(s.cron, s.timezone, now) if s.cron else now


def after_run(s: P.Schedule, now: float) -> float:
    """When a schedule that ran (or polled) at ``now`` is due again. Counted from now, not from
    the time it was due: however many cron times passed while the orchestrator was down or a
    job was active, they are run once."""
    return next_cron(s.cron, s.timezone, now) if s.cron else now + s.poll_s


class Action(NamedTuple):
    """What a due schedule does now: ``run`` a job (cron), ``poll`` the source (on-change), or
    ``wait`` (a job of its template is active); ``next_at`` is when it is due again."""

    kind: str  # run | poll | wait
    next_at: float
    note: str = ""


def decide(s: P.Schedule, now: float, active_job: str | None) -> Action | None:
    """None when the schedule is not due. A due schedule whose template has an active job stays
    due (its run is not dropped, only held) and says why."""
    if s.next_at > now:
        return None
    if active_job:
        return Action("wait", s.next_at, f"due: waits for job {active_job} of template {s.template} to finish")
    if s.on_change:
        return Action("poll", after_run(s, now))
    return Action("run", after_run(s, now))


def is_newer(latest: int, last: int | None) -> bool:
    """A source change the schedule has not started a job for (0: the source has none)."""
    return latest > 0 and (last is None or latest > last)


# ---------------------------------------------------------------------------- templates


def apply_template(t: P.Template, req: P.Submit) -> P.Submit:
    """The submit a template and a request's overrides make. What to integrate is taken whole
    from whichever names it: a request's --branch-spec replaces the template's source and
    target, a request's --source or --target replaces the template's branch spec."""
    if req.branch_spec is not None:
        source, target, branch_spec = None, None, req.branch_spec
    elif req.source is not None or req.target is not None:
        keep = t.branch_spec is None
        source = req.source if req.source is not None else (t.source if keep else None)
        target = req.target if req.target is not None else (t.target if keep else None)
        branch_spec = None
    else:
        source, target, branch_spec = t.source, t.target, t.branch_spec
    return P.Submit(
        req_id=req.req_id,
        workspace=req.workspace or t.workspace,
        source=source,
        target=target,
        branch_spec=branch_spec,
        change=req.change,
        desc=req.desc or t.desc,
        agent=req.agent or t.agent,
        pool=req.pool or t.pool,
        pipeline=req.pipeline,
        by=req.by,
    )
