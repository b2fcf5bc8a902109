"""A real job (broker, master, orchestrator, agent, p4sim) that hits a conflict: the people of
its workspace are told, with the conflicting file and the link to the job's page."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.e2e.conftest import JobStack
from tests.notify.conftest import WEB_URL, NotifyStack
from tests.notify.receivers import HttpReceiver

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def jobs(stack: Stack) -> JobStack:
    return JobStack(stack)


def test_a_job_waiting_for_a_person_is_announced_to_its_workspace(
    jobs: JobStack, notify: NotifyStack, http: HttpReceiver
) -> None:
    notify.receiver("ws1-team", kind="webhook", url=http.url("/ws1"))
    notify.receiver("ws2-team", kind="webhook", url=http.url("/ws2"))
    notify.rule(["ws1-team"], workspaces=["ws1"])
    notify.rule(["ws2-team"], workspaces=["ws2"])
    jobs.workspace("ws1", "conflict")
    jobs.start()
    notify.start_notifier()
    job_id = jobs.submit("ws1")
    view = jobs.wait_state(job_id, ("WAITING_RESOLVE",))
    (post,) = http.wait_posts(1)
    body = post.body
    assert post.path == "/ws1" and body["job_id"] == job_id and body["kind"] == "waiting"
    assert body["workspace"] == "ws1" and body["state"] == "WAITING_RESOLVE" and body["stage"] == view.stage
    assert body["conflicts"] == view.conflicts and any("conflict.c" in f for f in body["conflicts"])
    assert body["url"] == f"{WEB_URL}/jobs/{job_id}"
    with jobs.orch() as oc:
        oc.cancel(job_id)
    jobs.wait_state(job_id, ("CANCELLED",))
    posts = http.wait_posts(2)
    assert [p.body["kind"] for p in posts] == ["waiting", "cancelled"] and len(posts) == 2
