"""Jobs that fail fast and leave no mess (issue 12, items 1-4), through the real bus against
p4sim: unknown agents refused at submit, an offline one waited for visibly, a bad --change
failed at once, failed jobs cleaned up (on request and by policy), conflict markers caught
before submit, and a review gate before submit."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import zmq

from broker.client import ReplayClient
from common import protocol as P
from common import topics
from common.rpc import RequestError
from tests.conftest import wait_for
from tests.e2e.test_cli_jobs import p4bus

pytestmark = pytest.mark.timeout(180)


def _view(jobs, job_id: str, ok: Callable[[P.JobView], bool], what: str, timeout: float = 60.0) -> P.JobView:
    with jobs.orch() as oc:
        return wait_for(lambda: v if ok(v := oc.job(job_id)) else None, timeout, what, interval=0.1)


def _job_events(jobs, job_id: str) -> list[P.JobChanged]:
    with ReplayClient(zmq.Context.instance(), jobs.stack.endpoint("broker_replay"), jobs.stack.security()) as rc:
        bodies = [body for page in rc.pages(topics.job(job_id)) for _, _, body in page]
    return [ev for ev in (P.decode(b, P.Event) for b in bodies) if isinstance(ev, P.JobChanged)]


def _cleaned(view: P.JobView) -> bool:
    runs = [r for r in view.timeline if r.stage == "CLEANUP"]
    return bool(runs) and all(r.state == "DONE" for r in runs)


def _fail_pre_submit(jobs, marker: pathlib.Path) -> None:
    """A pre-submit hook that fails while ``marker`` exists: a job that fails after its
    pending change has files in it."""
    jobs.stack.tree["orchestrator"]["site"] = {"pre_submit": [["sh", "-c", f"test ! -e {marker}"]]}


# ---------------------------------------------------------------------------- item 1


def test_unknown_agent_or_pool_is_refused_and_an_offline_one_is_waited_for(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    for field, name in (("agent", "nosuch"), ("pool", "nopool")):
        with jobs.orch() as oc, pytest.raises(RequestError) as refused:
            oc.submit(workspace="ws1", source="//depot/dev/...", target="//depot/main/...", **{field: name})
        assert refused.value.code == "bad_request"
        assert f"no master has seen {field} {name!r}" in refused.value.message
    with jobs.orch() as oc:
        assert oc.jobs(include_finished=True) == []  # a refusal creates nothing
    # The agent a master has seen, offline now: the job is accepted and says what it waits for.
    jobs.stack.kill("agent-1")
    with jobs.masters() as mc:
        wait_for(lambda: not mc.agents(), 30, "the master to notice agent-1 is gone")
    job_id = jobs.submit("ws1", agent="agent-1")
    view = _view(jobs, job_id, lambda v: "agent-1" in v.waiting_for, "the job to wait for agent-1")
    assert view.state == "RUNNING" and "not connected" in view.waiting_for
    events = _job_events(jobs, job_id)
    assert any("agent-1" in ev.detail.get("waiting_for", "") for ev in events), events
    jobs.kill_and_start("agent-1")
    view = jobs.wait_state(job_id)
    assert view.state == "DONE" and view.waiting_for == "", view.reason
    followed = p4bus(jobs, "tail", job_id)
    assert followed.returncode == 0 and f"{job_id} waiting for: agent 'agent-1'" in followed.stdout, followed


# ---------------------------------------------------------------------------- item 4


def test_a_source_change_that_is_unknown_or_pending_fails_the_first_stage(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    view = jobs.wait_state(jobs.submit("ws1", change=999))
    assert (view.state, view.stage, view.key_line) == ("FAILED", "GET_LATEST_CL", "Change 999 unknown."), view
    pending = jobs.p4("ws1", "change", "-i", stdin="Change: new\n\nDescription:\n\tnot submitted\n")
    number = int(pending.split()[1])
    view = jobs.wait_state(jobs.submit("ws1", change=number))
    assert (view.state, view.stage) == ("FAILED", "GET_LATEST_CL")
    assert f"source change {number} is pending, not submitted" in view.reason
    assert not any(argv.startswith(("sync", "integrate")) for argv in jobs.executions("ws1"))


# ---------------------------------------------------------------------------- item 2


def test_a_failed_jobs_change_blocks_the_next_job_until_cleanup(jobs, tmp_path):
    marker = tmp_path / "fail-pre-submit"
    marker.touch()
    _fail_pre_submit(jobs, marker)
    jobs.workspace("ws1", "clean")
    jobs.start()
    first = jobs.wait_state(jobs.submit("ws1"))
    assert (first.state, first.stage) == ("FAILED", "PRE_SUBMIT") and first.change
    marker.unlink()
    second = jobs.wait_state(jobs.submit("ws1"))
    assert (second.state, second.stage) == ("FAILED", "INTEGRATE")
    assert f"in change {first.change}" in second.reason
    assert f"`p4bus cleanup {first.job_id}`" in second.reason, second.reason
    cancel = p4bus(jobs, "cancel", "--revert", first.job_id)
    assert cancel.returncode != 0 and f"`p4bus cleanup {first.job_id}`" in cancel.stderr
    done = p4bus(jobs, "cleanup", first.job_id)
    assert done.returncode == 0, done.stderr
    assert f"p4 revert -c {first.change}" in done.stdout
    # The orchestrator dies right after it answered: the cleanup it wrote down still runs, once.
    jobs.restart("orchestrator")
    view = _view(jobs, first.job_id, _cleaned, "the cleanup to finish")
    assert view.state == "FAILED" and view.change is None
    assert [r.argv[1:2] for r in view.timeline if r.stage == "CLEANUP"] == [["revert"], ["shelve"], ["change"]]
    ran = jobs.executions("ws1")
    for argv in (f"revert -c {first.change} //...", f"shelve -d -c {first.change}", f"change -d {first.change}"):
        assert ran.count(argv) == 1, (argv, ran)
    assert f"Change {first.change} unknown." in jobs.p4("ws1", "describe", "-s", str(first.change))
    again = p4bus(jobs, "cleanup", first.job_id)
    assert again.returncode != 0 and "no pending change to clean up" in again.stderr
    with jobs.orch() as oc:
        oc.retry(second.job_id, "INTEGRATE")
    view = jobs.wait_state(second.job_id)
    assert view.state == "DONE", view.reason


def test_cleanup_on_failure_leaves_the_workspace_clean_for_the_next_job(jobs, tmp_path):
    marker = tmp_path / "fail-pre-submit"
    marker.touch()
    _fail_pre_submit(jobs, marker)
    jobs.workspace("ws1", "clean", cleanup_on_failure=True)
    jobs.start()
    first = jobs.submit("ws1")
    view = _view(jobs, first, _cleaned, "the failed job's cleanup")
    assert view.state == "FAILED" and "File(s) not opened on this client." in jobs.p4("ws1", "opened")
    assert jobs.p4("ws1", "changes", "-s", "pending").strip() == ""
    marker.unlink()
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "DONE", view.reason


# ---------------------------------------------------------------------------- item 3


def test_conflict_markers_left_by_a_forced_resolve_send_the_job_back(jobs):
    jobs.workspace("ws1", "conflict")
    jobs.start()
    job_id = jobs.submit("ws1")
    view = jobs.wait_state(job_id, ("WAITING_RESOLVE", "FAILED"))
    assert view.state == "WAITING_RESOLVE", view.reason
    assert "edit from" in jobs.p4("ws1", "resolve", "-af")  # markers written, file marked resolved
    with jobs.orch() as oc:
        oc.resume(job_id)
    view = _view(jobs, job_id, lambda v: v.state != "RUNNING" and v.stage == "RESOLVE_CHECK", "the re-check to end")
    local = pathlib.Path(jobs.seeds["ws1"]["root"], "main", "src", "conflict.c")
    assert (view.state, view.stage) == ("WAITING_RESOLVE", "RESOLVE_CHECK"), view.reason
    assert view.conflicts == [str(local)]
    assert view.key_line.startswith(f"{local}:4: >>>> ORIGINAL")
    assert f"conflict markers left in 1 resolved file(s) at {local}:4, {local}:6, {local}:8" in view.waiting_for
    # The person edits the markers out, keeping main's line; the re-check lets the job go on.
    text = local.read_text().splitlines(keepends=True)
    keep = [line for line in text if not line.startswith((">>>>", "====", "<<<<")) and "dev wants" not in line]
    local.write_text("".join(line for line in keep if line != "conflict line 4\n"))
    with jobs.orch() as oc:
        oc.resume(job_id)
    view = jobs.wait_state(job_id)
    assert view.state == "DONE", view.reason
    submitted = jobs.p4("ws1", "print", "-q", f"//depot/main/src/conflict.c@{view.submitted_change}")
    assert ">>>>" not in submitted and "<<<<" not in submitted


def test_review_before_submit_waits_for_approve_with_the_shelf_to_look_at(jobs):
    jobs.workspace("ws1", "clean", review_before_submit=True)
    jobs.start()
    job_id = jobs.submit("ws1")
    view = jobs.wait_state(job_id, ("WAITING_APPROVAL", "FAILED", "DONE"))
    assert (view.state, view.stage) == ("WAITING_APPROVAL", "P4PUSH"), view.reason
    assert f"p4bus approve {job_id}" in view.waiting_for
    assert "//depot/main/" in jobs.p4("ws1", "describe", "-S", "-s", str(view.change))  # the shelf
    status = p4bus(jobs, "status", job_id)
    assert "WAITING_APPROVAL" in status.stdout
    # Following the job ends where it waits for a person, with the "waits" exit code.
    assert p4bus(jobs, "tail", job_id).returncode == 3
    approved = p4bus(jobs, "approve", job_id)
    assert approved.returncode == 0 and f"{job_id} RUNNING P4PUSH" in approved.stdout, approved.stderr
    view = jobs.wait_state(job_id)
    assert view.state == "DONE" and view.submitted_change, view.reason
    again = p4bus(jobs, "approve", job_id)
    assert again.returncode != 0 and "not WAITING_APPROVAL" in again.stderr
