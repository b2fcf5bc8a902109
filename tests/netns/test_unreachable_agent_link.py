"""An agent cut off from the bus for 15 s while `p4 change -i` and `p4 submit` run on it: its
commands are UNKNOWN, nothing runs again, and when the link is back its spool answers."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for
from tests.e2e.test_reliability import _alive, _assert_each_command_ran_once
from tests.e2e.test_unreachable import Gates, _pending_changes, in_flight
from tests.netns.conftest import NetJobs

pytestmark = pytest.mark.timeout(300)

CUT_S = 15.0


def test_an_agent_cut_off_15s_during_create_change_and_submit_runs_nothing_twice(hosts: NetJobs):
    # Well under the cut: the commands are UNKNOWN for most of it (the default is 60 s here).
    hosts.stack.tree["orchestrator"]["lost_after_s"] = 2.0
    held = {"ws1": "change", "ws2": "submit"}
    for name in held:
        hosts.workspace(name, "clean")
    gates = Gates(hosts)
    hosts.start()
    ids, pids = gates.submit_held(held, 90)
    for name, stage in (("ws1", "CREATE_CHANGE"), ("ws2", "P4PUSH")):
        wait_for(lambda n=name, s=stage: in_flight(hosts.view(ids[n]), s), 60, f"{name}: {stage} in flight")
    hosts.net.cut("agent")
    cut_at = time.time()
    seen: dict[str, set[str]] = {name: set() for name in held}
    try:
        for name, command in held.items():
            gates.open(name, command)
        for name, pid in pids.items():
            wait_for(lambda pid=pid: not _alive(pid), 30, f"{name}: p4 {held[name]} to end in the cut")

        def looked_until_the_cut_ends() -> bool:
            for name, job_id in ids.items():
                view = hosts.view(job_id)
                seen[name].add(view.state if view else "?")
            # The cut's length is what is tested, so it is a fixed time, not a condition.
            return time.time() >= cut_at + CUT_S

        wait_for(looked_until_the_cut_ends, CUT_S + 30, "the end of the cut", interval=0.3)
    finally:
        hosts.net.heal("agent")
    for name, job_id in ids.items():
        assert "UNKNOWN" in seen[name], f"{name}: never shown UNKNOWN in the cut ({seen[name]})"
        view = hosts.wait_state(job_id, timeout=150)
        assert view.state == "DONE", (name, view.stage, view.reason)
        assert all(r.attempt == 1 and r.state == "DONE" for r in view.timeline), view.timeline
        _assert_each_command_ran_once(hosts, name, view)
        assert _pending_changes(hosts, name) == "", f"{name}: a spare pending change was left"
