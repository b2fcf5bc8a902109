"""`p4bus schedule list|add|remove`: templates run on a cron expression or on a new change."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import click

from common import protocol as P
from p4bus.cli import EXIT_USAGE, Ctx, UserError
from p4bus.commands.jobs import _call
from p4bus.render import Grid, age, print_items


def when(s: P.Schedule) -> str:
    if s.on_change:
        return f"on a new change (polled every {s.poll_s:g}s)"
    return f"cron '{s.cron}' {s.timezone}"


def next_run(s: P.Schedule, now: float) -> str:
    """The next run in the schedule's own time zone, and how far off it is."""
    if s.next_at <= now:
        return "due now"
    at = datetime.fromtimestamp(s.next_at, ZoneInfo(s.timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"{at} (in {age(now, s.next_at)})"


def schedules_table(schedules: list[P.Schedule], now: float) -> Grid:
    grid = Grid(["schedule", "template", "when", "next run", "last job", "note"], keep=(0, 3), wrap=5)
    for s in schedules:
        last = s.last_job or "-"
        if s.last_change:
            last += f" (change {s.last_change})"
        grid.add(s.name, s.template, when(s), next_run(s, now), last, s.note)
    return grid


@click.group()
def schedule() -> None:
    """Run templates by themselves: on a cron expression, or when their source has a new change."""


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(obj: Ctx, as_json: bool) -> None:
    """Every schedule with its next run and its last job."""
    schedules = _call(obj, lambda oc: oc.schedules())
    print_items(
        schedules,
        as_json,
        lambda: schedules_table(schedules, time.time()),
        "no schedules (add one with `p4bus schedule add NAME --template T --cron '0 2 * * *'`)",
    )


@schedule.command()
@click.argument("name")
@click.option("--template", "template_name", required=True, help="The template to run.")
@click.option("--cron", default="", help="When to run: 'MIN HOUR DAY MONTH WEEKDAY', or six fields with seconds last.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone the --cron times are in.")
@click.option("--on-change", is_flag=True, help="Run whenever the source has a newer submitted change.")
@click.option(
    "--poll", "poll_s", type=float, default=60.0, show_default=True, help="With --on-change: seconds between polls."
)
@click.option("--replace", is_flag=True, help="Replace a schedule of that name.")
@click.pass_obj
def add(
    obj: Ctx, name: str, template_name: str, cron: str, timezone: str, on_change: bool, poll_s: float, replace: bool
) -> None:
    """Run a template on a cron expression (--cron) or on each new source change (--on-change)."""
    if bool(cron) == on_change:
        raise UserError("give --cron EXPRESSION or --on-change (one of them)", EXIT_USAGE)
    s = P.Schedule(name=name, template=template_name, cron=cron, timezone=timezone, on_change=on_change, poll_s=poll_s)
    saved = _call(obj, lambda oc: oc.put_schedule(s, replace))
    click.echo(f"schedule {saved.name}: {saved.template} {when(saved)}; next run {next_run(saved, time.time())}")


@schedule.command()
@click.argument("name")
@click.pass_obj
def remove(obj: Ctx, name: str) -> None:
    """Stop a schedule (a job it started goes on)."""
    gone = _call(obj, lambda oc: oc.remove_schedule(name))
    click.echo(f"removed schedule {gone.name}")


COMMANDS = [schedule]
