"""The harness every stack is started with (p4bus/harness/stack.py): its files, its waits, its restarts."""

from __future__ import annotations

import time
import tomllib

import pytest

from common import protocol as P
from common.rpc import MasterClient
from p4bus.harness.stack import StackError
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_settings_file_is_written_once_per_distinct_settings(stack: Stack) -> None:
    first = stack.config_file()
    assert stack.config_file() == first
    assert tomllib.loads(first.read_text()) == stack.settings()
    # Changed in place, as tests do between starts: the next file must say so.
    stack.tree["agent"]["slots"] = 7
    second = stack.config_file()
    assert second != first
    assert tomllib.loads(second.read_text())["agent"]["slots"] == 7
    assert "slots = 7" not in first.read_text()
    extra = stack.config_file({"agent": {"id": "x"}})
    assert tomllib.loads(extra.read_text())["agent"] == {**stack.tree["agent"], "id": "x"}


def test_a_service_that_exits_fails_the_wait_at_once_naming_its_log(stack: Stack) -> None:
    stack.start("broker")
    stack.start("master", extra={"master": {"heartbeat_s": "often"}})
    t0 = time.monotonic()
    with pytest.raises(StackError) as err:
        stack.wait_ready(timeout=30)
    assert time.monotonic() - t0 < 20
    assert "master exited" in str(err.value)
    assert str(stack.proc("master").log_path) in str(err.value)


def test_restart_starts_the_same_agent_again_and_stop_ends_everything(stack: Stack) -> None:
    stack.start("broker")
    stack.start("master")
    first = stack.start("agent", name="a1", extra={"agent": {"id": "a1"}})
    stack.wait_ready(ids=["a1"])
    with MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5.0) as mc:
        (before,) = mc.agents()
        second = stack.restart("a1")
        assert first.returncode is not None and second.pid != first.pid
        assert second.log_path.name == "a1-2.log" and first.log_path.name == "a1.log"
        assert stack.proc("a1") is second
        # The master may still list the killed process as alive: the new one has a new epoch.
        # It may also have been declared lost already (3 heartbeats of 0.2 s) and not be listed.
        wait_for(lambda: any(a.epoch != before.epoch for a in mc.agents()), 20, "the new agent process to register")
        reply = mc.exec(P.CmdSpec(argv=["true"], cwd=str(stack.tmp)))
        wait_for(lambda: mc.query([reply.cmd_id], agent="a1")[0].state == "done", 20, "the command on the new agent")
    stack.check_alive()
    stack.stop()
    assert all(p.poll() is not None for p in stack.procs)
    stack.check_alive()  # stopped on purpose: not a failure
