"""Templates, schedules and retention without sockets: the pure decisions, then the scheduler on a
real store (SQLite and PostgreSQL) with a clock the test moves by hand (restarts are a new Store on
the same file or database)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from test_pipeline_helpers import interpret, ok, workspace
from test_pipeline_interpreters import OPENED

from common import protocol as P
from common import roles
from common.config import OrchestratorConf, WorkspaceConf
from orchestrator import schedule as S
from orchestrator.change_poll import Answer, Question, latest_change
from orchestrator.engine import Engine, JobError
from orchestrator.pipeline import JobState, OutcomeKind, SiteConfig
from orchestrator.pipeline.model import CommandSpec
from orchestrator.scheduler import Scheduler
from orchestrator.store import CmdKind, Store

pytestmark = pytest.mark.timeout(20)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


NIGHTLY = P.Schedule(name="nightly", template="dev-main", cron="0 2 * * *", timezone="Europe/Berlin")
WATCH = P.Schedule(name="watch", template="dev-main", on_change=True, poll_s=30.0)


# ---------------------------------------------------------------------------- pure: when


def test_cron_times_are_read_in_the_schedules_time_zone():
    # 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
    assert S.next_cron("0 2 * * *", "Europe/Berlin", utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 1)
    assert S.next_cron("0 2 * * *", "Europe/Berlin", utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 0)
    assert S.next_cron("0 2 * * *", "UTC", utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 2)
    # Six fields: seconds last; strictly after the given time.
    assert S.next_cron("* * * * * */10", "UTC", utc(2026, 7, 10, 12, 0, 10)) == utc(2026, 7, 10, 12, 0, 20)


def test_missed_cron_runs_collapse_into_one():
    now = utc(2026, 7, 20, 12)
    # Due ten days ago: ten nightly runs were missed (orchestrator down). One run, then tomorrow.
    s = P.Schedule(name="n", template="t", cron="0 2 * * *", next_at=utc(2026, 7, 10, 0))
    action = S.decide(s, now, active_job=None)
    assert action == S.Action("run", utc(2026, 7, 21, 2))
    assert S.decide(P.Schedule(name="n", template="t", cron="0 2 * * *", next_at=action.next_at), now, None) is None


def test_a_due_run_waits_while_its_template_has_an_active_job():
    s = P.Schedule(name="n", template="t", cron="0 2 * * *", next_at=100.0)
    action = S.decide(s, 500.0, active_job="INT-1")
    assert action is not None and action.kind == "wait" and action.next_at == 100.0  # still due
    assert "INT-1" in action.note
    assert S.decide(s, 50.0, active_job="INT-1") is None  # not due yet: nothing to say


def test_on_change_polls_at_its_interval_and_runs_only_for_a_newer_change():
    s = P.Schedule(name="w", template="t", on_change=True, poll_s=30.0, next_at=100.0)
    assert S.decide(s, 130.0, None) == S.Action("poll", 160.0)
    assert S.first_run(s, 10.0) == 10.0  # a new on-change schedule polls at once
    assert S.is_newer(5, None) and S.is_newer(6, 5)
    assert not S.is_newer(5, 5) and not S.is_newer(4, 5) and not S.is_newer(0, None)


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        (P.Schedule(name="s", template="t"), "got neither"),
        (P.Schedule(name="s", template="t", cron="* * * * *", on_change=True), "not both"),
        (P.Schedule(name="s", template="t", cron="61 * * * *"), "cron expression '61 * * * *' is not valid"),
        (P.Schedule(name="s", template="t", cron="0 2 * * *", timezone="Mars/Olympus"), "'Mars/Olympus' is not known"),
        (P.Schedule(name="s", template="t", on_change=True, poll_s=0.1), "below 1s"),
        (P.Schedule(name="-x", template="t", cron="0 2 * * *"), "schedule name '-x' is not valid"),
    ],
)
def test_bad_schedules_are_refused_with_what_to_do(schedule, fragment):
    errors = S.schedule_errors(schedule)
    assert any(fragment in e for e in errors), errors


def test_a_request_overrides_its_template():
    t = P.Template(name="t", workspace="ws", source="//depot/dev/...", target="//depot/main/...", desc="nightly")
    same = S.apply_template(t, P.Submit(req_id="r"))
    assert (same.workspace, same.source, same.target, same.desc) == (
        "ws",
        "//depot/dev/...",
        "//depot/main/...",
        "nightly",
    )
    other = S.apply_template(t, P.Submit(req_id="r", source="//depot/rel/...", change=7, desc="hotfix"))
    assert (other.source, other.target, other.change, other.desc) == (
        "//depot/rel/...",
        "//depot/main/...",
        7,
        "hotfix",
    )
    # What to integrate comes whole from whichever names it.
    branch = S.apply_template(t, P.Submit(req_id="r", branch_spec="dev-main"))
    assert (branch.source, branch.target, branch.branch_spec) == (None, None, "dev-main")
    tb = P.Template(name="tb", branch_spec="dev-main")
    paths = S.apply_template(tb, P.Submit(req_id="r", source="//a/...", target="//b/..."))
    assert (paths.source, paths.target, paths.branch_spec) == ("//a/...", "//b/...", None)


def test_only_operators_change_templates_and_schedules():
    for tag in ("put_template", "remove_template", "put_schedule", "remove_schedule"):
        assert {r for r in roles.ROLES if roles.may_send(roles.ORCHESTRATOR_API, r, tag)} == {"operator"}
    for tag in ("get_template", "list_templates", "list_schedules"):
        assert {r for r in roles.ROLES if roles.may_send(roles.ORCHESTRATOR_API, r, tag)} == {"viewer", "operator"}


# ---------------------------------------------------------------------------- polling


def _status(stdout: str = "", exit_code: int = 0, stderr: str = "") -> P.CmdStatus:
    return P.CmdStatus(cmd_id="c", state="done", exit_code=exit_code, stdout=stdout.encode(), stderr=stderr.encode())


def test_latest_change_reads_p4_changes_and_a_branch_specs_sources():
    ran: list[list[str]] = []
    branch = "... Branch dev-main\n... Access 2026/01/01\n... View0 //depot/dev/... //depot/main/...\n"
    answers = {"branch": _status(branch), "changes": _status("... change 42\n... user bob\n\n")}

    def run(args: list[str]) -> P.CmdStatus:
        ran.append(args)
        return answers[args[1]]

    assert latest_change(run, None, "dev-main") == 42
    assert ran == [
        ["-ztag", "branch", "-o", "dev-main"],
        ["-ztag", "changes", "-m1", "-s", "submitted", "//depot/dev/..."],
    ]
    assert latest_change(lambda args: _status(""), "//depot/dev/...", None) == 0  # no changes yet
    with pytest.raises(ValueError, match="p4 changes: Perforce password"):
        latest_change(
            lambda args: _status("", 1, "Perforce password (P4PASSWD) invalid or unset.\n"), "//d/x/...", None
        )
    with pytest.raises(ValueError, match="'nope' does not exist"):
        latest_change(lambda args: _status("... Branch nope\n... View0 //a/... //b/...\n"), None, "nope")


# ---------------------------------------------------------------------------- the scheduler


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Poller:
    """Stands in for the poll thread: the test answers the questions it was asked."""

    def __init__(self) -> None:
        self.asked: list[Question] = []
        self.ready: list[Answer] = []

    def ask(self, q: Question) -> None:
        self.asked.append(q)

    def answers(self) -> list[Answer]:
        out, self.ready = self.ready, []
        return out

    def close(self) -> None:
        pass


CONF = OrchestratorConf(
    workspaces={"ws": WorkspaceConf(p4port="sim:1666", p4user="bot", p4client="ws", root="/ws", pool="linux")}
)
DEV_MAIN = P.Template(name="dev-main", source="//depot/dev/...", target="//depot/main/...", desc="dev to main")


class Orch:
    """The orchestrator's store, engine and scheduler on one store; a new one is a restart."""

    def __init__(self, path: str, clock: Clock) -> None:
        self.store = Store(path)
        self.engine = Engine(self.store, CONF, environ={}, clock=clock)
        self.poller = Poller()
        self.sched = Scheduler(self.store, self.engine, self.poller)  # type: ignore[arg-type]

    def put(self, msg: P.TemplateRequest) -> P.Base:
        return self.sched.handle(msg)

    def jobs(self) -> list[str]:
        return [j.id for j in self.store.list_jobs(include_finished=True, limit=100)]

    def finish(self, job_id: str) -> None:
        self.engine.cancel(job_id, revert=False)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 7, 10, 12))


def test_templates_are_checked_saved_and_kept_while_a_schedule_runs_them(store_at, clock):
    o = Orch(store_at(), clock)
    with pytest.raises(JobError, match="workspace 'nope' is not configured"):
        o.put(
            P.PutTemplate(
                req_id="r", template=P.Template(name="x", workspace="nope", source="//a/...", target="//b/...")
            )
        )
    with pytest.raises(JobError, match="missing --target"):
        o.put(P.PutTemplate(req_id="r", template=P.Template(name="x", source="//depot/dev/...")))
    o.put(P.PutTemplate(req_id="r", template=DEV_MAIN))
    with pytest.raises(JobError, match="exists: pass --replace"):
        o.put(P.PutTemplate(req_id="r", template=DEV_MAIN))
    o.put(P.PutTemplate(req_id="r", template=DEV_MAIN, replace=True))
    assert o.put(P.ListTemplates(req_id="r")) == P.TemplateList(req_id="r", templates=[DEV_MAIN])
    with pytest.raises(JobError, match="no template 'other' \\(known: dev-main\\)"):
        o.put(P.PutSchedule(req_id="r", schedule=P.Schedule(name="s", template="other", cron="0 2 * * *")))
    o.put(P.PutSchedule(req_id="r", schedule=NIGHTLY))
    with pytest.raises(JobError, match="run by schedule\\(s\\) nightly"):
        o.put(P.RemoveTemplate(req_id="r", name="dev-main"))
    o.put(P.RemoveSchedule(req_id="r", name="nightly"))
    o.put(P.RemoveTemplate(req_id="r", name="dev-main"))
    assert o.put(P.ListTemplates(req_id="r")) == P.TemplateList(req_id="r", templates=[])


def test_submit_with_a_template_and_overrides(store_at, clock):
    o = Orch(store_at(), clock)
    o.put(P.PutTemplate(req_id="r", template=DEV_MAIN))
    job_id, _ = o.sched.submit(P.Submit(req_id="r", template="dev-main", change=5))
    job = o.store.job(job_id)
    assert job is not None and job.params.source == "//depot/dev/..." and job.params.change == 5
    assert job.params.desc == "dev to main" and job.pool == "linux"
    with pytest.raises(JobError, match="no template 'nope'"):
        o.sched.submit(P.Submit(req_id="r", template="nope"))


def test_cron_runs_once_per_time_never_beside_an_active_job_and_collapses_missed_runs_across_a_restart(store_at, clock):
    o = Orch(store_at(), clock)
    o.put(P.PutTemplate(req_id="r", template=DEV_MAIN))
    o.put(P.PutSchedule(req_id="r", schedule=NIGHTLY))
    assert o.sched.t.schedule("nightly").next_at == utc(2026, 7, 11, 0)  # 02:00 Berlin summer time
    o.sched.tick(clock.t)
    assert o.jobs() == []
    clock.t = utc(2026, 7, 11, 0, 0, 1)
    o.sched.tick(clock.t)
    o.sched.tick(clock.t)
    (first,) = o.jobs()
    # Three nights pass while the job waits for a person: the runs wait, they do not pile up.
    o.store.apply_transition(first, JobState.WAITING_RESOLVE, "RESOLVE_CHECK", 0, 1, {}, "", "", clock.t)
    for night in (12, 13, 14):
        clock.t = utc(2026, 7, night, 0, 0, 1)
        o.sched.tick(clock.t)
    assert o.jobs() == [first]
    s = o.sched.t.schedule("nightly")
    assert s.next_at == utc(2026, 7, 12, 0) and f"waits for job {first}" in s.note
    o.finish(first)
    o.close()
    # The orchestrator was down for a week: one run at start, then the next night.
    clock.t = utc(2026, 7, 21, 9)
    o = Orch(store_at(), clock)
    o.sched.tick(clock.t)
    o.sched.tick(clock.t)
    jobs = o.jobs()
    assert len(jobs) == 2 and jobs[0] == first
    s = o.sched.t.schedule("nightly")
    assert (s.last_job, s.last_run_at, s.next_at, s.note) == (jobs[1], clock.t, utc(2026, 7, 22, 0), "")


def test_on_change_runs_for_a_newer_change_once(store_at, clock):
    o = Orch(store_at(), clock)
    o.put(P.PutTemplate(req_id="r", template=DEV_MAIN))
    o.put(P.PutSchedule(req_id="r", schedule=WATCH))
    o.sched.tick(clock.t)
    o.sched.tick(clock.t)  # one question out at a time
    (q,) = o.poller.asked
    assert (q.key, q.source, q.branch_spec, q.pool, q.workspace.name) == (
        "watch",
        "//depot/dev/...",
        None,
        "linux",
        "ws",
    )
    o.poller.ready.append(Answer("watch", 7))
    o.sched.tick(clock.t)
    (job_id,) = o.jobs()
    assert o.store.job(job_id).params.change == 7
    assert o.sched.t.schedule("watch").last_change == 7
    # While the job is active nothing is polled; once it ends, the same change starts nothing.
    clock.t += 60
    o.sched.tick(clock.t)
    assert len(o.poller.asked) == 1
    o.finish(job_id)
    o.sched.tick(clock.t)
    assert len(o.poller.asked) == 2
    o.poller.ready.append(Answer("watch", 7))
    o.sched.tick(clock.t)
    assert o.jobs() == [job_id]
    # A failed poll is noted and asked again at the next interval.
    clock.t += 30
    o.sched.tick(clock.t)
    o.poller.ready.append(Answer("watch", None, "p4 changes: Connect to server failed"))
    o.sched.tick(clock.t)
    assert o.sched.t.schedule("watch").note == "poll failed: p4 changes: Connect to server failed"
    clock.t += 30
    o.sched.tick(clock.t)
    o.poller.ready.append(Answer("watch", 9))
    o.sched.tick(clock.t)
    jobs = o.jobs()
    assert len(jobs) == 2 and o.store.job(jobs[1]).params.change == 9
    assert len(o.poller.asked) == 4


def test_retention_prunes_finished_jobs_but_not_active_ones_or_ones_cleaning_up(store_at, clock):
    o = Orch(store_at(), clock)
    o.put(P.PutTemplate(req_id="r", template=DEV_MAIN))
    old, _ = o.sched.submit(P.Submit(req_id="r", template="dev-main"))
    o.finish(old)
    cleaning, _ = o.engine.submit(P.Submit(req_id="r", source="//depot/a/...", target="//depot/b/..."))
    o.finish(cleaning)
    with o.store.tx():
        o.store.add_command(cleaning, CmdKind.CLEANUP, "CLEANUP", 0, 1, CommandSpec(argv=["p4", "revert"]), 0, 0)
    active, _ = o.engine.submit(P.Submit(req_id="r", source="//depot/a/...", target="//depot/c/..."))
    clock.t += 3600
    recent, _ = o.engine.submit(P.Submit(req_id="r", source="//depot/a/...", target="//depot/d/..."))
    o.finish(recent)
    assert o.store.prune_jobs(clock.t - 1800) == [old]
    assert o.store.job(old) is None and o.store.job_commands(old) == []
    assert sorted(o.jobs()) == sorted([cleaning, active, recent])
    assert o.sched.t.active_job("dev-main") is None


# ---------------------------------------------------------------------------- per-workspace blocklists


def test_a_workspaces_blocklist_is_checked_besides_the_sites():
    site = SiteConfig(blocklist=["//depot/other/..."])
    blocked = interpret("PRE_SUBMIT", ok(OPENED), site=site, workspace=workspace(blocklist=["//depot/rel/secrets/..."]))
    assert blocked.kind is OutcomeKind.FAIL and blocked.key_line == "//depot/rel/secrets/key.pem"
    assert (
        blocked.reason
        == "//depot/rel/secrets/key.pem is blocked by workspace ws1's blocklist (//depot/rel/secrets/...)"
    )
    # The same job in a workspace without that entry goes on.
    assert interpret("PRE_SUBMIT", ok(OPENED), site=site).kind is OutcomeKind.REPEAT


def test_a_workspace_blocklist_entry_that_is_no_depot_path_stops_the_orchestrator(tmp_path):
    ws = WorkspaceConf(p4port="sim:1666", p4user="bot", p4client="ws", root="/ws", blocklist=["secrets/..."])
    with pytest.raises(
        JobError, match="^" + re.escape("orchestrator.workspaces.ws.blocklist entry 'secrets/...' is not a depot path")
    ):
        Engine(Store(tmp_path / "jobs.db"), OrchestratorConf(workspaces={"ws": ws}), environ={})


def test_the_engine_gives_jobs_their_workspaces_blocklist(tmp_path):
    ws = WorkspaceConf(p4port="sim:1666", p4user="bot", p4client="ws", root="/ws", blocklist=["//depot/main/x/..."])
    engine = Engine(Store(tmp_path / "jobs.db"), OrchestratorConf(workspaces={"ws": ws}), environ={})
    assert engine.workspace("ws").blocklist == ["//depot/main/x/..."]
