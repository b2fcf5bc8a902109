"""The command bus end to end: broker, master(s) and agents as processes, used like a person would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from typing import TypeVar

import pytest

from common import protocol as P
from common import topics
from common.rpc import MasterClient, RequestError
from common.zmqutil import free_port
from tests.conftest import REPO, wait_for
from tests.integration.conftest import agent_ids, journalled

pytestmark = pytest.mark.timeout(120)

MISSED_HEARTBEATS = 3  # docs/protocol.md: a peer is dead after 3 missed heartbeat intervals
E = TypeVar("E", bound=P.EventBase)


def cli(stack, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p4bus", "--config", str(stack.config_file()), *args],
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
        **kw,
    )


def test_run_streams_a_million_lines_and_exit_codes(bus):
    stack, _ = bus
    done = cli(stack, "run", "--", "seq", "1000000")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(b"%d\n" % i for i in range(1, 1000001))
    done = cli(stack, "run", "--", "sh", "-c", "echo oops >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"", b"oops\n")
    done = cli(stack, "run", "--", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + signal.SIGTERM


def test_binary_output_arrives_byte_identical(bus, tmp_path):
    stack, _ = bus
    blob = os.urandom(3_000_000) + b"\xff\xfe\x00 not utf-8 \xc3\x28"
    (tmp_path / "blob").write_bytes(blob)
    done = cli(stack, "run", "--cwd", str(tmp_path), "--", "cat", "blob")
    assert done.returncode == 0 and done.stdout == blob


def test_ctrl_c_kills_the_remote_process_group(bus, tmp_path):
    stack, _mc = bus
    marker = tmp_path / "grandchild.pid"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p4bus",
            "--config",
            str(stack.config_file()),
            "run",
            "--",
            "sh",
            "-c",
            f"sleep 100 & echo $! > {marker}; wait",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: marker.exists() and marker.read_text().strip(), 20, "the grandchild to start")
    grandchild = int(marker.read_text())
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 128 + signal.SIGTERM
    wait_for(lambda: not _alive(grandchild), 10, "the grandchild to be killed")


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_cli_errors_are_one_line_and_non_zero(bus, tmp_path):
    stack, _ = bus
    done = cli(stack, "run", "--pool", "gpu", "--", "true")
    assert done.returncode == 2 and done.stderr.count(b"\n") == 1 and b"pool 'gpu'" in done.stderr
    done = cli(stack, "run", "--cwd", "/etc", "--", "true")
    assert done.returncode != 0 and done.stderr.count(b"\n") == 1 and b"outside the workspace roots" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nslots = 'x'\n")
    done = subprocess.run(
        [sys.executable, "-m", "p4bus", "--config", str(bad), "agents"], capture_output=True, cwd=REPO, timeout=30
    )
    assert done.returncode == 2 and b"agent.slots" in done.stderr and b"Traceback" not in done.stderr


def test_agents_and_events_commands(bus):
    stack, _mc = bus
    done = cli(stack, "agents", "--json")
    assert done.returncode == 0 and b'"agent_id":"a1"' in done.stdout.replace(b" ", b"")
    assert cli(stack, "run", "--", "echo", "hello").returncode == 0
    p = subprocess.Popen(
        [sys.executable, "-m", "p4bus", "--config", str(stack.config_file()), "events", "--topic", "cmd."],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        # History first: the fixture's probe commands (`true`), then ours.
        line = p.stdout.readline()
        for _ in range(100):
            if b"hello" in line:
                break
            assert b'"argv":["true"]' in line or b'"t":"cmd_done"' in line, line
            line = p.stdout.readline()
        assert b'"t":"cmd_started"' in line and b'"argv":["echo","hello"]' in line
    finally:
        p.kill()
        p.wait()


def test_agent_sigkilled_is_reported_lost_and_a_live_one_is_not(bus):
    """A real agent SIGKILLed: the master declares it lost for missed heartbeats, no sooner than
    MISSED_HEARTBEATS intervals after it last heard from it, while an agent that keeps running
    over the same span stays. (The rule against a scripted peer: test_master.py.)"""
    stack, mc = bus
    a1 = stack.proc("agent")
    stack.start("agent", extra={"agent": {"id": "a2"}})
    wait_for(lambda: sorted(agent_ids(mc)) == ["a1", "a2"], 20, "the second agent to register")
    heard = next(a.last_seen for a in mc.agents() if a.agent_id == "a1")  # it speaks at least this late
    os.killpg(a1.pid, signal.SIGKILL)
    wait_for(lambda: agent_ids(mc) == ["a2"], 20, "a1 to be dropped")
    replay = stack.endpoint("broker_replay")
    lost = wait_for(
        lambda: journalled(replay, stack.security(), "agent.a1", P.AgentLost), 10, "a1's agent_lost in the journal"
    )
    assert [(e.agent_id, e.reason) for e in lost] == [("a1", "missed heartbeats")]
    interval = max(stack.tree["master"]["heartbeat_s"], stack.tree["agent"]["heartbeat_s"])
    assert lost[0].ts - heard > MISSED_HEARTBEATS * interval
    assert journalled(replay, stack.security(), "agent.a2", P.AgentLost) == []
    assert agent_ids(mc) == ["a2"]


def test_master_restart_gets_agents_back_and_results_of_commands_finished_meanwhile(bus, tmp_path):
    stack, mc = bus
    go = tmp_path / "go"
    # The command ends when the test says so: after the master is gone.
    script = f"while [ ! -e {go} ]; do sleep 0.02; done; echo finished"
    reply = mc.exec(P.CmdSpec(argv=["sh", "-c", script], cwd=str(tmp_path)))
    master = stack.proc("master")
    os.killpg(master.pid, signal.SIGKILL)
    master.wait()
    go.touch()
    # The agent reports the end to the broker, which journals it: the command finished while no
    # master existed.
    topic = topics.cmd("", reply.cmd_id)
    replay = stack.endpoint("broker_replay")
    wait_for(
        lambda: journalled(replay, stack.security(), topic, P.CmdDone), 20, "the command to finish without a master"
    )
    stack.start("master")
    wait_for(lambda: agent_ids(mc) == ["a1"], 20, "the agent to re-register")
    status = mc.query([reply.cmd_id], agent="a1")[0]
    assert status.state == "done" and status.exit_code == 0 and status.stdout == b"finished\n"


def test_same_exec_twice_runs_once(bus, tmp_path):
    _stack, mc = bus
    counter = tmp_path / "count"
    spec = P.CmdSpec(argv=["sh", "-c", f"echo x >> {counter}"], cwd=str(tmp_path))
    first = mc.exec(spec, cmd_id="c-once")
    second = mc.exec(spec, cmd_id="c-once")
    assert second.duplicate and not first.duplicate
    wait_for(lambda: mc.query(["c-once"], agent="a1")[0].state == "done", 10, "the command to finish")
    assert counter.read_text() == "x\n"


def test_two_masters_share_one_agent_and_its_slot_limit(stack, tmp_path):
    p_agents, p_clients = free_port(), free_port()
    second = {
        "master_agents": f"tcp://127.0.0.1:{p_agents}",
        "master_clients": f"tcp://127.0.0.1:{p_clients}",
        "master": {"id": "m2"},
    }
    stack.start("broker")
    stack.start("master", extra={"master": {"id": "m1"}})
    stack.start("master", extra=second)
    stack.start(
        "agent",
        extra={
            "agent": {"id": "shared", "slots": 1, "masters": [stack.endpoint("master_agents"), second["master_agents"]]}
        },
    )
    m1 = MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5.0)
    m2 = MasterClient([second["master_clients"]], stack.security(), timeout=5.0)
    wait_for(lambda: agent_ids(m1) == ["shared"] and agent_ids(m2) == ["shared"], 20, "both masters to see it")
    long = m1.exec(P.CmdSpec(argv=["sleep", "30"], cwd=str(tmp_path)))
    with pytest.raises(RequestError) as err:
        m2.exec(P.CmdSpec(argv=["true"], cwd=str(tmp_path)))
    assert err.value.code == "agent_busy"
    # Either master can reach the command: kill it through the other one.
    assert m2.kill(long.cmd_id, agent="shared").found
    wait_for(lambda: m2.query([long.cmd_id], agent="shared")[0].state == "done", 10, "the kill")
    ok = m2.exec(P.CmdSpec(argv=["true"], cwd=str(tmp_path)))
    assert ok.agent == "shared"
    m1.close()
    m2.close()


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path):
    from common.zmqutil import free_port_base

    base = free_port_base(7)  # the bus's six and the dashboard's
    env = {k: v for k, v in os.environ.items() if not k.startswith("P4BUS_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "p4bus", "up", "--state-dir", str(tmp_path / "s"), "--port-base", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    lines = []
    while not any(line.startswith(b"Try:") for line in lines):
        line = up.stdout.readline()
        assert line, b"".join(lines)
        lines.append(line)
    assert any(f"tcp://127.0.0.1:{base + 5}".encode() in line for line in lines)
    web = f"http://127.0.0.1:{base + 6}/"
    assert any(line.split() == [b"web", web.encode()] for line in lines), b"".join(lines)
    with urllib.request.urlopen(web + "healthz", timeout=10) as r:
        assert r.read() == b"ok"
    done = subprocess.run(
        [sys.executable, "-m", "p4bus", "--port-base", str(base), "run", "--", "seq", "1000000"],
        capture_output=True,
        cwd=REPO,
        # The key `up` made (and printed in its Try: line): the bus refuses everyone else.
        env={**env, "P4BUS_KEY": str(tmp_path / "s" / "keys" / "operator.key_secret")},
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.endswith(b"\n1000000\n")
    children = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert len(children) == 5  # broker, master, orchestrator, agent, web
    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    assert b"p4bus stopped." in up.stdout.read()
    assert [p for p in children if _alive(p)] == []
