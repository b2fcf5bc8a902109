"""Whole integration jobs through the real bus against p4sim depots."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from common import protocol as P
from common.rpc import RequestError
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def test_clean_job_is_done_with_content_in_main(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    job_id = jobs.submit("ws1", desc="e2e clean")
    view = jobs.wait_state(job_id)
    assert view.state == "DONE", (view.reason, view.key_line)
    change = view.submitted_change
    assert change and isinstance(change, int)
    described = jobs.p4("ws1", "describe", "-s", str(change))
    assert f"Change {change} by" in described and "//depot/main/" in described
    # The integrated content is in //depot/main at that change: sync it and compare with dev.
    jobs.p4("ws1", "sync", "-f", f"//depot/main/...@{change}")
    jobs.p4("ws1", "sync", "-f", "//depot/dev/...")
    root = jobs.seeds["ws1"]["root"]
    main, dev = pathlib.Path(root, "main"), pathlib.Path(root, "dev")
    only_dev = [p.relative_to(dev) for p in dev.rglob("*") if p.is_file() and not (main / p.relative_to(dev)).exists()]
    assert only_dev == [], f"files of dev not integrated into main: {only_dev}"
    stages = [r.stage for r in view.timeline]
    for stage in (
        "SYNC",
        "CREATE_CHANGE",
        "INTEGRATE",
        "RESOLVE_PASS_1",
        "RESOLVE_PASS_2",
        "NEEDS_RESOLVE",
        "PRE_SUBMIT",
        "SHELVE",
        "NC_FIX",
        "P4PUSH",
    ):
        assert stage in stages
    assert all(r.state == "DONE" for r in view.timeline)


def test_conflict_waits_then_resolve_and_resume_finishes(jobs):
    jobs.workspace("ws1", "conflict")
    jobs.start()
    job_id = jobs.submit("ws1")
    view = jobs.wait_state(job_id, ("WAITING_RESOLVE",) + ("FAILED",))
    assert view.state == "WAITING_RESOLVE", view.reason
    assert any("conflict.c" in c for c in view.conflicts), view.conflicts
    assert _checks(view) == []
    # Resume without resolving: the re-check runs, finds the conflict still there, waits again.
    with jobs.orch() as oc:
        oc.resume(job_id)
    view = _wait_view(jobs, job_id, lambda v: v.state != "RUNNING" and _checks(v), "the re-check to finish")
    assert view.state == "WAITING_RESOLVE" and view.stage == "RESOLVE_CHECK", view.reason
    assert [r.outcome for r in _checks(view)] == ["WAIT_RESOLVE"]
    out = jobs.p4("ws1", "resolve", "-at")
    assert "copy from" in out
    with jobs.orch() as oc:
        oc.resume(job_id)
    view = jobs.wait_state(job_id)
    assert view.state == "DONE", view.reason
    assert view.submitted_change
    # Nothing left to resolve, then the resolved file is checked for conflict markers (p4 diff).
    assert [r.outcome for r in _checks(view)] == ["WAIT_RESOLVE", "REPEAT", "NEXT"]
    assert _checks(view)[-1].argv[1:3] == ["diff", "-du"]


def test_already_integrated_is_nothing_to_do(jobs):
    jobs.workspace("ws1", "nothing-to-do")
    jobs.start()
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "NOTHING_TO_DO", view.reason
    integrate = [r for r in view.timeline if r.stage == "INTEGRATE"]
    assert "already integrated" in integrate[0].key_line
    # The empty pending change was deleted again.
    assert [r.argv[1:3] for r in integrate[1:]] == [["change", "-d"]]


def test_two_jobs_on_one_workspace_run_one_after_the_other(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    first = jobs.submit("ws1")
    second = jobs.submit("ws1")
    with jobs.orch() as oc:
        queued = oc.job(second)
        assert queued.state == "QUEUED" and queued.queue_position == 1 and first in queued.waiting_for
    v1 = jobs.wait_state(first)
    v2 = jobs.wait_state(second)
    assert v1.state == "DONE"
    assert v2.state == "NOTHING_TO_DO"  # the first one integrated everything
    first_end = max(r.ended_at for r in v1.timeline)
    second_start = min(r.created_at for r in v2.timeline)
    assert second_start >= first_end


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("source", "//depot/dev/...;rm -rf /", "shell"),
        ("workspace", "nope", "not configured"),
        ("source", "depot/dev/...", "not a depot path"),
    ],
)
def test_bad_parameters_refused_at_submit(jobs, field, value, needle):
    jobs.workspace("ws1", "clean")
    jobs.start()
    args = {"workspace": "ws1", "source": "//depot/dev/...", "target": "//depot/main/...", field: value}
    with jobs.orch() as oc:
        with pytest.raises(RequestError) as err:
            oc.submit(**args)
        assert needle in err.value.message
        assert oc.jobs(include_finished=True) == []


def test_automatic_recheck_continues_once_resolved(jobs):
    jobs.stack.tree["orchestrator"]["recheck_interval_s"] = 0.5
    jobs.workspace("ws1", "conflict")
    jobs.start()
    job_id = jobs.submit("ws1")
    view = jobs.wait_state(job_id, ("WAITING_RESOLVE",))
    assert view.stage == "NEEDS_RESOLVE"
    assert not [r for r in view.timeline if r.stage == "RESOLVE_CHECK"]
    # Nobody resolved yet, nobody resumed: a re-check runs by itself, finds the conflict again
    # and the job waits again.
    view = _wait_view(
        jobs, job_id, lambda v: v.state == "WAITING_RESOLVE" and _checks(v), "a re-check that waits again"
    )
    assert view.stage == "RESOLVE_CHECK" and any("conflict.c" in c for c in view.conflicts), view.conflicts
    assert {r.outcome for r in _checks(view)} == {"WAIT_RESOLVE"}
    jobs.p4("ws1", "resolve", "-at")
    view = jobs.wait_state(job_id, timeout=60)
    assert view.state == "DONE", view.reason
    # A later re-check found nothing left to resolve and no conflict markers in the resolved
    # file, and the job went on from there.
    outcomes = [r.outcome for r in _checks(view)]
    assert len(outcomes) >= 3 and outcomes[-2:] == ["REPEAT", "NEXT"], outcomes
    assert set(outcomes[:-2]) == {"WAIT_RESOLVE"}, outcomes
    assert view.submitted_change


def _checks(view: P.JobView) -> list[P.StageRun]:
    """The job's finished RESOLVE_CHECK runs, oldest first."""
    return [r for r in view.timeline if r.stage == "RESOLVE_CHECK" and r.state == "DONE"]


def _wait_view(jobs, job_id: str, pred: Callable[[P.JobView], object], what: str, timeout: float = 30.0) -> P.JobView:
    """The job's view once ``pred`` holds for it."""
    with jobs.orch() as oc:

        def matching() -> P.JobView | None:
            view = oc.job(job_id)
            return view if pred(view) else None

        return wait_for(matching, timeout, f"{job_id}: {what}", interval=0.1)
