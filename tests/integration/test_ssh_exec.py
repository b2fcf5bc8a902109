"""The SSH executor: an agent process whose commands run through a real sshd on loopback
(tests/conftest.py `sshd`). The test plays the master and the broker, as in test_agent.py,
and checks the remote side with ps: every remote command carries a unique marker."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import zmq
from ssh_support import processes_with
from test_agent import Rig, read_spool

from common import protocol as proto
from common.ids import new_id
from common.ssh import SshDest, control_path
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def ssh_rig(stack: Stack, ctx: zmq.Context, sshd, **conf) -> Rig:
    r = Rig(stack, ctx, exec_via=sshd.url(), ssh_options=sshd.options(), **conf)
    r.start()
    return r


@pytest.fixture
def rig(stack: Stack, ctx: zmq.Context, sshd) -> Rig:
    return ssh_rig(stack, ctx, sshd)


def marker_sleep() -> str:
    """A `sleep` argument no other process has: ps finds exactly our remote processes."""
    return f"{random.randint(500, 999)}.{random.randint(10**8, 10**9 - 1)}"


def spooled(rig: Rig, cmd_id: str) -> bytes:
    """stdout so far (the output thread creates the file once the command is under way)."""
    try:
        return read_spool(rig, cmd_id, "stdout")
    except FileNotFoundError:
        return b""


def remote_sleeps(marker: str) -> list[str]:
    """The remote `sleep MARKER` processes (the local ssh client's command line has the marker too)."""
    return [p for p in processes_with(marker) if p.split(" ")[1] == "sleep"]


def master_pid(stack: Stack, sshd) -> int:
    path = control_path(Path(stack.tree["state_dir"]), SshDest.parse(sshd.url()))
    done = subprocess.run(
        ["ssh", "-o", f"ControlPath={path}", "-O", "check", "127.0.0.1"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.split("pid=")[1].split(")")[0])


# --------------------------------------------------------------------------- output and results


def test_100k_lines_byte_identical_in_spool_and_events(rig: Rig) -> None:
    expected = subprocess.run(["seq", "100000"], capture_output=True, check=True).stdout
    reply, status, t = rig.run(["sh", "-c", "seq 100000; printf 'tail\\0\\377' >&2"])
    assert reply.status.state == "running"
    assert (status.exit_code, status.error, status.stdout_bytes) == (0, "", len(expected))
    assert read_spool(rig, status.cmd_id, "stdout") == expected == bytes(t.streams[proto.STDOUT])
    assert read_spool(rig, status.cmd_id, "stderr") == b"tail\0\377" == bytes(t.streams[proto.STDERR])


def test_exit_codes_stdin_cwd_and_env(rig: Rig, tmp_path: Path) -> None:
    _, status, _ = rig.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert (status.exit_code, status.signal, status.stderr) == (7, None, b"oops\n")
    big = os.urandom(200_000)
    _, status, t = rig.run(["cat"], stdin=big)
    assert (status.exit_code, bytes(t.streams[proto.STDOUT])) == (0, big)
    (tmp_path / "sub dir").mkdir()
    # No local shell anywhere: quotes, $ and ; arrive as literal argv elements.
    _, status, _ = rig.run(
        ["sh", "-c", 'pwd; echo "$TZ"; printf "%s|" "$@"', "x", "a b", "$HOME", "';rm -rf /'"],
        cwd="sub dir",
        env={"TZ": "bo b"},
    )
    assert status.stdout == f"{tmp_path / 'sub dir'}\nbo b\na b|$HOME|';rm -rf /'|".encode()
    _, status, _ = rig.run(["env"])
    keys = {line.split(b"=", 1)[0].decode() for line in status.stdout.splitlines()}
    assert keys <= {"PATH", "HOME", "LANG", "PWD", "SHLVL", "_"} and "PATH" in keys


def test_policy_applies_to_remote_paths(stack: Stack, ctx: zmq.Context, sshd, tmp_path: Path) -> None:
    r = ssh_rig(stack, ctx, sshd, allowed_executables=["true", "sh", "/bin/echo"])
    for argv, kw, why in [
        (["cat", "/etc/hostname"], {}, "not on this agent's allowed_executables"),
        (["/usr/bin/cat"], {}, "not on this agent's allowed_executables"),
        (["true"], {"cwd": "/"}, "outside the workspace roots"),
        (["true"], {"cwd": "../.."}, "outside the workspace roots"),
        (["true"], {"env": {"LD_PRELOAD": "/x.so"}}, "LD_PRELOAD not on this agent's env_allowlist"),
    ]:
        reply = r.master.exec(new_id("ref"), argv, **kw)
        assert reply.status.state == "done" and why in reply.status.error, reply
    _, status, _ = r.run(["/bin/echo", "allowed by absolute path"])
    assert status.stdout == b"allowed by absolute path\n"
    # A symlink inside the root that points outside passes the lexical check; the remote
    # wrapper resolves it and refuses before running anything.
    (tmp_path / "escape").symlink_to("/")
    _, status, _ = r.run(["sh", "-c", "echo ran"], cwd="escape")
    assert status.exit_code == 126 and status.stdout == b"" and b"outside the workspace roots" in status.stderr


# --------------------------------------------------------------------------- ending commands


def test_timeout_ends_the_remote_process_group(rig: Rig) -> None:
    m = marker_sleep()
    _, status, _ = rig.run(["sh", "-c", f"sleep {m} & sleep {m}"], timeout=1.0)
    assert status.timed_out and status.signal == signal.SIGTERM and status.exit_code is None
    wait_for(lambda: not processes_with(m), timeout=5, what="no remote survivor")


def test_kill_escalates_to_sigkill_on_the_remote_group(rig: Rig) -> None:
    m = marker_sleep()
    cmd_id = new_id("c")
    rig.master.exec(cmd_id, ["sh", "-c", f"trap '' TERM; sleep {m} & sleep {m}"])
    rig.sink.until_started(cmd_id)
    wait_for(lambda: len(remote_sleeps(m)) >= 2, what="both remote sleeps running")
    reply = rig.master.request(proto.Kill(req_id="k1", cmd_id=cmd_id))
    assert reply.found and reply.status.state == "running"
    status = rig.sink.until_done(cmd_id).done.status
    assert status.killed and status.signal == signal.SIGKILL and status.duration >= 1.0  # kill_grace_s
    wait_for(lambda: not processes_with(m), timeout=5, what="no remote survivor")


def test_leftover_is_ended_after_the_leader_exits(rig: Rig) -> None:
    m = marker_sleep()
    _, status, _ = rig.run(["sh", "-c", f"sleep {m} & echo leader done"])
    assert (status.exit_code, status.stdout) == (0, b"leader done\n")
    # The remote wrapper kills the leftover and exits as the session ends, which may be a moment
    # after the agent has reported the command (its keeper records the exit as soon as ssh ends).
    wait_for(lambda: not processes_with(m), timeout=10, what="the remote leftover ended")


# --------------------------------------------------------------------------- the connection goes away


def test_cut_master_connection_fails_the_command_and_cleans_up(stack: Stack, rig: Rig, sshd) -> None:
    m = marker_sleep()
    cmd_id = new_id("c")
    rig.master.exec(cmd_id, ["sh", "-c", f"echo before; sleep {m}"])
    wait_for(lambda: spooled(rig, cmd_id) == b"before\n", what="output in the spool")
    old = master_pid(stack, sshd)
    os.kill(old, signal.SIGKILL)
    status = rig.sink.until_done(cmd_id, timeout=15).done.status
    assert status.exit_code == 255 and status.error.startswith("ssh connection lost: the connection to ssh://")
    assert status.stdout == b"before\n"
    wait_for(lambda: not processes_with(m), timeout=10, what="the remote group ended")
    # The next command starts a new master.
    _, status, _ = rig.run(["echo", "again"])
    assert (status.exit_code, status.stdout) == (0, b"again\n") and master_pid(stack, sshd) != old


def test_killed_ssh_client_leaves_nothing_remote_and_a_killed_agent_is_reattached(rig: Rig) -> None:
    m = marker_sleep()
    cmd_id = new_id("c")
    rig.master.exec(cmd_id, ["sleep", m])
    started = rig.sink.until_started(cmd_id)
    # At once: the cut may come before the remote command has its process group.
    os.kill(started.pid, signal.SIGKILL)  # the local ssh session process
    status = rig.sink.until_done(cmd_id).done.status
    assert status.error == "ssh connection lost: the ssh client was ended by signal 9"
    wait_for(lambda: not processes_with(m), timeout=10, what="the remote sleep ended")

    m = marker_sleep()
    rig.master.exec("at-crash", ["sleep", m])
    wait_for(lambda: remote_sleeps(m), what="the remote sleep")
    # The session's keeper holds its stdin, and the ControlMaster (ssh -f) is in no agent
    # process group: the remote command lives on, and the restarted agent takes it up again.
    rig.stop(signal.SIGKILL)
    rig.start()
    assert remote_sleeps(m)
    assert rig.master.query("at-crash").state == "running"
    assert rig.master.request(proto.Kill(req_id=new_id("r"), cmd_id="at-crash")).found
    status = rig.sink.until_done("at-crash", timeout=20).done.status
    assert (status.killed, status.signal, status.error) == (True, signal.SIGTERM, "")
    wait_for(lambda: not processes_with(m), timeout=10, what="the remote sleep ended by the kill")


def test_unreachable_host_is_a_recorded_refusal(stack: Stack, ctx: zmq.Context, sshd) -> None:
    r = Rig(stack, ctx, exec_via="ssh://nobody@127.0.0.1:1", ssh_options=sshd.options())
    r.start(warm=False)
    reply = r.master.exec("no-ssh", ["true"])
    assert reply.status.state == "done" and reply.status.error.startswith(
        "cannot execute 'true': ssh to ssh://nobody@127.0.0.1:1 failed"
    )
