"""Templates, schedules and retention with a real stack: p4sim depots, agents, the orchestrator's
SQLite store. Cron expressions with seconds make a schedule fire within the test."""

from __future__ import annotations

import itertools
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zmq

from broker.client import ReplayClient
from common import protocol as P
from common.rpc import RequestError
from tests.conftest import wait_for
from tests.e2e.test_cli_jobs import p4bus

pytestmark = pytest.mark.timeout(180)

TERMINAL = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED")


def _jobs(jobs) -> list[P.JobView]:
    with jobs.orch() as oc:
        return oc.jobs(include_finished=True)


def _schedule(jobs, name: str) -> P.Schedule:
    with jobs.orch() as oc:
        return next(s for s in oc.schedules() if s.name == name)


def _template(jobs, name: str, ws: str, **kw: str) -> None:
    info = jobs.seeds[ws]
    with jobs.orch() as oc:
        oc.put_template(P.Template(name=name, workspace=ws, source=info["source"], target=info["target"], **kw))


def test_cli_templates_and_a_cron_schedule_that_never_runs_beside_its_own_job(jobs):
    info = jobs.workspace("ws1", "clean")
    jobs.start()
    bad = p4bus(jobs, "template", "add", "t1", "--workspace", "nope", "--source", info["source"], "--target", "//x")
    assert bad.returncode == 2 and "workspace 'nope' is not configured" in bad.stderr, bad.stderr
    added = p4bus(
        jobs,
        "template",
        "add",
        "dev-main",
        "--workspace",
        "ws1",
        "--source",
        info["source"],
        "--target",
        info["target"],
    )
    assert added.returncode == 0, added.stderr
    listed = p4bus(jobs, "template", "list")
    assert "dev-main" in listed.stdout and info["source"] in listed.stdout
    # A template submitted by hand, with an override.
    manual = p4bus(jobs, "submit", "--template", "dev-main", "--desc", "by hand")
    assert manual.returncode == 0, manual.stderr
    first = jobs.wait_state(manual.stdout.strip())
    assert first.state == "DONE" and first.params["desc"] == "by hand", first.reason
    # Every second: due again and again while its job runs, yet one job at a time.
    on = p4bus(jobs, "schedule", "add", "often", "--template", "dev-main", "--cron", "* * * * * *", "--tz", "UTC")
    assert on.returncode == 0 and "next run" in on.stdout, on.stderr
    wait_for(lambda: len(_jobs(jobs)) >= 3, 90, "two scheduled jobs")
    assert p4bus(jobs, "schedule", "remove", "often").returncode == 0
    scheduled = [j for j in _jobs(jobs) if j.job_id != first.job_id]
    assert all(j.params.get("source") == info["source"] for j in scheduled)
    for earlier, later in itertools.pairwise(scheduled):
        ended = jobs.wait_state(earlier.job_id)
        assert ended.updated_at <= later.created_at, f"{later.job_id} started while {earlier.job_id} ran"
    # A template a schedule runs cannot be removed.
    with jobs.orch() as oc:
        oc.put_schedule(P.Schedule(name="nightly", template="dev-main", cron="0 2 * * *", timezone="Europe/Berlin"))
    kept = p4bus(jobs, "template", "remove", "dev-main")
    assert kept.returncode == 2 and "run by schedule(s) nightly" in kept.stderr
    listed = p4bus(jobs, "schedule", "list")
    assert "Europe/Berlin" in listed.stdout and ("CET" in listed.stdout or "CEST" in listed.stdout), listed.stdout


def _submit_source_change(jobs, ws: str, text: str) -> int:
    """A person edits a file in the source branch and submits it; the new change's number."""
    root = Path(jobs.seeds[ws]["root"])
    jobs.p4(ws, "sync", "//depot/dev/...")
    jobs.p4(ws, "edit", "//depot/dev/src/only_dev.c")
    path = root / "dev" / "src" / "only_dev.c"
    path.write_text(path.read_text() + text)
    out = jobs.p4(ws, "submit", "-d", "a new dev change")
    assert "submitted" in out, out
    return int(jobs.p4(ws, "-ztag", "changes", "-m1", "//depot/dev/...").split("... change ")[1].split()[0])


def test_on_change_schedule_starts_a_job_for_each_newer_source_change(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    _template(jobs, "dev-main", "ws1")
    with jobs.orch() as oc:
        oc.put_schedule(P.Schedule(name="watch", template="dev-main", on_change=True, poll_s=1.0))
    first = wait_for(lambda: _jobs(jobs) or None, 30, "the first job")[0]
    assert jobs.wait_state(first.job_id).state == "DONE"
    # Polls go on and find nothing newer: no job.
    polls = len([e for e in jobs.executions("ws1") if "changes -m1 -s submitted" in e])
    wait_for(
        lambda: len([e for e in jobs.executions("ws1") if "changes -m1 -s submitted" in e]) >= polls + 2,
        30,
        "two more polls",
    )
    assert [j.job_id for j in _jobs(jobs)] == [first.job_id]
    change = _submit_source_change(jobs, "ws1", "a line from a new change\n")
    second = wait_for(lambda: [j for j in _jobs(jobs) if j.job_id != first.job_id] or None, 30, "a job for it")[0]
    assert second.params.get("change") == change
    assert jobs.wait_state(second.job_id).state == "DONE"
    jobs.p4("ws1", "sync", "//depot/main/...")
    assert "a line from a new change" in (Path(jobs.seeds["ws1"]["root"]) / "main/src/only_dev.c").read_text()
    s = _schedule(jobs, "watch")
    assert (s.last_job, s.last_change) == (second.job_id, change)


def _cron_at(times: list[float]) -> str:
    """A six-field cron expression (seconds last) naming exactly these times of one minute."""
    d = [datetime.fromtimestamp(t, UTC) for t in times]
    assert len({(x.minute, x.hour, x.day, x.month) for x in d}) == 1
    return f"{d[0].minute} {d[0].hour} {d[0].day} {d[0].month} * {','.join(str(x.second) for x in d)}"


def test_missed_cron_runs_are_run_once_after_a_restart(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    _template(jobs, "dev-main", "ws1")
    # Three times a second apart, far enough ahead to stop the orchestrator first on a loaded
    # machine, within one minute.
    start = int(time.time()) + 6
    while datetime.fromtimestamp(start, UTC).second > 56:
        start += 1
    times = [float(start + i) for i in range(3)]
    with jobs.orch() as oc:
        oc.put_schedule(P.Schedule(name="thrice", template="dev-main", cron=_cron_at(times)))
    jobs.stack.kill("orchestrator")
    assert time.time() < times[0], "the orchestrator was stopped too late for this test"
    wait_for(lambda: time.time() > times[-1] + 0.5, 15, "the three times to pass")
    jobs.restart("orchestrator")
    (job,) = wait_for(lambda: _jobs(jobs) or None, 30, "the missed run")
    s = _schedule(jobs, "thrice")
    assert s.last_job == job.job_id and s.next_at > time.time() + 3600, s
    assert jobs.wait_state(job.job_id).state == "DONE"
    assert [j.job_id for j in _jobs(jobs)] == [job.job_id]


def test_retention_prunes_finished_jobs_but_keeps_active_ones_and_the_journal(jobs):
    jobs.workspace("ws1", "clean")
    jobs.workspace("ws2", "conflict")
    jobs.stack.tree["orchestrator"].update(job_retention_s=3.0, prune_interval_s=0.5)
    jobs.start()
    waiting = jobs.submit("ws2")
    done = jobs.submit("ws1")
    assert jobs.wait_state(done).state == "DONE"
    assert jobs.wait_state(waiting, ("WAITING_RESOLVE", "FAILED")).state == "WAITING_RESOLVE"

    def gone() -> bool:
        with jobs.orch() as oc:
            try:
                oc.job(done)
            except RequestError as exc:
                return exc.code == "unknown_job"
        return False

    wait_for(gone, 30, f"{done} to be pruned")
    with jobs.orch() as oc:
        assert oc.job(waiting).state == "WAITING_RESOLVE"
    store = sqlite3.connect(f"file:{jobs.tmp / 'state' / 'jobs.db'}?mode=ro", uri=True)
    assert store.execute("SELECT COUNT(*) FROM commands WHERE job_id=?", (done,)).fetchone() == (0,)
    assert store.execute("SELECT COUNT(*) FROM commands WHERE job_id=?", (waiting,)).fetchone()[0] > 0
    store.close()
    # Its history is still in the broker's journal.
    with ReplayClient(zmq.Context.instance(), jobs.stack.endpoint("broker_replay"), jobs.stack.security()) as rc:
        states = [P.decode_event([t.encode(), body]) for page in rc.pages(f"job.{done}") for _, t, body in page]
    assert "DONE" in [ev.state for ev in states if isinstance(ev, P.JobChanged)]
