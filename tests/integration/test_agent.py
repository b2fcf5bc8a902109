"""The agent as a real process, driven by a real ROUTER (the test plays the master) and
observed through a real SUB (the test plays the broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from test_agent_support import EventSink, MasterPeer, agent_extra, group_members, warm_up

from common import auth
from common import protocol as proto
from common.ids import new_id
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.timeout(60)


class Rig:
    """One agent process with its test master(s) and event sink."""

    def __init__(self, stack: Stack, ctx: zmq.Context, masters: int = 1, **agent_conf) -> None:
        self.stack = stack
        self.masters = [MasterPeer(ctx, stack.security("master"), name=f"m{i}") for i in range(masters)]
        self.sink = EventSink(ctx, stack.security("broker"))
        self.agent_conf = agent_conf
        self.proc: subprocess.Popen | None = None
        self.spool = Path(stack.tree["state_dir"]) / "spool" / "a1"

    @property
    def master(self) -> MasterPeer:
        return self.masters[0]

    def start(self, warm: bool = True) -> None:
        self.proc = self.stack.start("agent", extra=agent_extra(self.masters, self.sink, **self.agent_conf))
        for m in self.masters:
            m.handshake()
        if warm:
            warm_up(self.master, self.sink)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def run(self, argv: list[str], **kw) -> tuple[proto.ExecReply, proto.CmdStatus, object]:
        cmd_id = new_id("c")
        reply = self.master.exec(cmd_id, argv, **kw)
        assert isinstance(reply, proto.ExecReply), reply
        t = self.sink.until_done(cmd_id)
        return reply, t.done.status, t


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    auth.stop_authenticator(c)
    c.destroy(linger=0)


@pytest.fixture
def rig(stack: Stack, ctx: zmq.Context) -> Rig:
    r = Rig(stack, ctx)
    r.start()
    return r


def read_spool(rig: Rig, cmd_id: str, name: str) -> bytes:
    path = rig.spool / cmd_id / name
    # The keeper makes an output file at the command's first output; the output thread makes
    # an empty one after CmdDone.
    return path.read_bytes() if path.exists() else b""


# --------------------------------------------------------------------------- registration


def test_hello_welcome_heartbeats_and_reregister(stack: Stack, ctx: zmq.Context) -> None:
    r = Rig(stack, ctx, slots=3, workspaces={"ws1": str(stack.tmp)})
    r.start(warm=False)
    hello = r.master.hellos[0]
    assert hello.proto == proto.PROTOCOL_VERSION
    assert (hello.agent.agent_id, hello.agent.slots, hello.agent.workspaces) == ("a1", 3, ["ws1"])
    assert hello.agent.epoch and hello.agent.running == []
    hb = r.master.expect(proto.Heartbeat, auto=False)
    assert hb.free_slots == 3
    # Say nothing: after 3 silent intervals the agent treats us as gone and greets again.
    again = r.master.expect(proto.Hello, timeout=5, auto=False)
    assert again.agent.epoch == hello.agent.epoch
    r.master.send(proto.Welcome(master_id="m0", heartbeat_s=0.2))
    r.master.send(proto.Reregister(reason="master restarted"))
    assert r.master.expect(proto.Hello, timeout=2, auto=False).agent.agent_id == "a1"
    assert r.stop() == 0
    assert r.master.expect(proto.Bye, timeout=5).agent_id == "a1"


# --------------------------------------------------------------------------- output


def test_million_lines_byte_identical_in_spool_and_events(rig: Rig) -> None:
    expected = subprocess.run(["seq", "1000000"], capture_output=True, check=True).stdout
    reply, status, t = rig.run(["seq", "1000000"])
    assert reply.status.state == "running" and reply.status.pid
    assert (status.exit_code, status.stdout_bytes, status.stderr_bytes) == (0, len(expected), 0)
    assert read_spool(rig, status.cmd_id, "stdout") == expected
    assert bytes(t.streams[proto.STDOUT]) == expected
    # Batched, not a message per line, and never above chunk_bytes (default 256 KiB).
    assert t.chunks < 200 and t.max_chunk <= 256 * 1024
    assert status.truncated and status.stdout.startswith(b"1\n2\n") and status.stdout.endswith(b"999999\n1000000\n")
    assert msgspec.msgpack.decode(read_spool(rig, status.cmd_id, "result"))["exit_code"] == 0


def test_binary_output_on_both_streams(rig: Rig, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3_000_000) + b"\xff\xfe\x00")
    _, status, t = rig.run(["sh", "-c", f"cat {blob}; cat {blob} >&2"])
    data = blob.read_bytes()
    assert status.exit_code == 0 and status.stdout_bytes == status.stderr_bytes == len(data)
    for stream, name in ((proto.STDOUT, "stdout"), (proto.STDERR, "stderr")):
        assert read_spool(rig, status.cmd_id, name) == data
        assert bytes(t.streams[stream]) == data


def test_exit_codes_signals_and_stderr(rig: Rig) -> None:
    _, status, _ = rig.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert (status.exit_code, status.signal, status.stderr) == (7, None, b"oops\n")
    _, status, _ = rig.run(["sh", "-c", "kill -9 $$"])
    assert (status.exit_code, status.signal) == (None, 9)


def test_stdin_is_delivered_and_a_secret_one_never_spooled(rig: Rig) -> None:
    big = b"x" * 300_000 + b"\n"
    _, status, t = rig.run(["cat"], stdin=big)
    assert bytes(t.streams[proto.STDOUT]) == big
    _, status, t = rig.run(["cat"], stdin=b"hunter2-secret\n", stdin_secret=True)
    # Delivered (cat echoes it), and redacted from the output like every known secret.
    assert status.stdout == b"***\n" == read_spool(rig, status.cmd_id, "stdout")
    spec = read_spool(rig, status.cmd_id, "spec")
    assert b"hunter2" not in spec and msgspec.msgpack.decode(spec)["spec"]["argv"] == ["cat"]
    assert oct(rig.spool.stat().st_mode & 0o777) == "0o700"


def test_fetch_byte_ranges_from_the_spool(rig: Rig) -> None:
    _, status, _ = rig.run(["seq", "100000"])
    full = read_spool(rig, status.cmd_id, "stdout")
    reply = rig.master.request(
        proto.Fetch(req_id="f1", cmd_id=status.cmd_id, stream=proto.STDOUT, offset=1000, size=5000)
    )
    assert (reply.data, reply.total, reply.complete) == (full[1000:6000], len(full), False)  # bytes remain after 6000
    reply = rig.master.request(proto.Fetch(req_id="f2", cmd_id="nope", stream=proto.STDOUT, offset=0))
    assert isinstance(reply, proto.ErrorReply) and reply.code == "unknown_cmd"


# --------------------------------------------------------------------------- ending commands


def test_timeout_ends_the_whole_process_group(rig: Rig) -> None:
    _, status, _ = rig.run(["sh", "-c", "sleep 100 & sleep 100"], timeout=0.5)
    assert status.timed_out and status.signal == signal.SIGTERM and not status.killed
    wait_for(lambda: not group_members(status.pid), timeout=5, what="no survivor in the process group")


def test_kill_escalates_to_sigkill_for_a_group_ignoring_term(rig: Rig) -> None:
    cmd_id = new_id("c")
    rig.master.exec(cmd_id, ["sh", "-c", "trap '' TERM; sleep 100 & sleep 100"])
    started = rig.sink.until_started(cmd_id)
    # A sleep exists only once the shell has set its trap (sh may exec the last one itself).
    wait_for(lambda: len(group_members(started.pid)) >= 2, what="the trap set and a sleep forked")
    reply = rig.master.request(proto.Kill(req_id="k1", cmd_id=cmd_id))
    assert reply.found and reply.status.state == "running"
    status = rig.sink.until_done(cmd_id).done.status
    assert status.killed and status.signal == signal.SIGKILL
    assert status.duration >= 1.0  # kill_grace_s of the test stack
    wait_for(lambda: not group_members(started.pid), timeout=5, what="no survivor in the process group")
    assert not rig.master.request(proto.Kill(req_id="k2", cmd_id="unknown-cmd")).found


def test_leftover_holding_the_pipes_is_ended_after_the_leader_exits(rig: Rig) -> None:
    _, status, _ = rig.run(["sh", "-c", "sleep 100 & echo leader done"])
    assert (status.exit_code, status.stdout) == (0, b"leader done\n")
    assert status.duration >= 1.0  # kill_grace_s of the test stack: the leftover had that long
    wait_for(lambda: not group_members(status.pid), timeout=5, what="the leftover sleep ended")


# --------------------------------------------------------------------------- idempotency


def test_same_exec_runs_once_also_across_restart(rig: Rig, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    argv = ["sh", "-c", f"echo ran >> {marker}"]
    first = rig.master.exec("once-1", argv)
    assert not first.duplicate
    rig.sink.until_done("once-1")
    second = rig.master.exec("once-1", argv)
    assert second.duplicate and second.status.state == "done" and second.status.exit_code == 0
    assert rig.stop() == 0
    rig.start()
    third = rig.master.exec("once-1", argv)
    assert third.duplicate and third.status.exit_code == 0
    assert marker.read_text() == "ran\n"


def test_duplicate_while_running_reports_running(rig: Rig) -> None:
    rig.master.exec("dup-run", ["sleep", "100"])
    again = rig.master.exec("dup-run", ["sleep", "100"])
    assert again.duplicate and again.status.state == "running"
    partial = rig.master.request(proto.Fetch(req_id="f", cmd_id="dup-run", stream=proto.STDOUT, offset=0))
    assert (partial.data, partial.complete) == (b"", False)
    rig.master.request(proto.Kill(req_id="k", cmd_id="dup-run"))
    assert rig.sink.until_done("dup-run").done.status.killed


# --------------------------------------------------------------------------- refusals


def test_policy_refusals_are_recorded_outcomes(stack: Stack, ctx: zmq.Context, tmp_path: Path) -> None:
    r = Rig(stack, ctx, allowed_executables=["true", "sh"])
    r.start()
    cases = {
        "ref-exe": (["cat", "/etc/hostname"], {}, "not on this agent's allowed_executables"),
        "ref-path": (["/tmp/elsewhere/sh"], {}, "not on this agent's allowed_executables"),
        "ref-cwd": (["true"], {"cwd": "/"}, "outside the workspace roots"),
        "ref-dotdot": (["true"], {"cwd": str(tmp_path / ".." / "..")}, "outside the workspace roots"),
        "ref-env": (
            ["true"],
            {"env": {"LD_PRELOAD": "/x.so", "P4USER": "bob"}},
            "LD_PRELOAD not on this agent's env_allowlist",
        ),
    }
    for cmd_id, (argv, kw, why) in cases.items():
        reply = r.master.exec(cmd_id, argv, **kw)
        assert isinstance(reply, proto.ExecReply) and reply.status.state == "done", reply
        assert why in reply.status.error and reply.status.pid is None
        assert r.sink.until_done(cmd_id).done.status.error == reply.status.error
        assert r.master.query(cmd_id).error == reply.status.error
        assert r.master.exec(cmd_id, argv, **kw).duplicate
    (tmp_path / "sub").mkdir()
    _, status, _ = r.run(["sh", "-c", "pwd; echo $TZ"], cwd="sub", env={"TZ": "UTC"})
    assert status.stdout == f"{os.path.realpath(tmp_path / 'sub')}\nUTC\n".encode()
    reply = r.master.exec("bad-argv", [])
    assert isinstance(reply, proto.ErrorReply) and reply.code == "bad_request"
    reply = r.master.exec("../escape", ["true"])
    assert isinstance(reply, proto.ErrorReply) and reply.code == "bad_request"


def test_missing_executable_is_a_recorded_failure(rig: Rig) -> None:
    reply = rig.master.exec("no-such", ["definitely-not-a-program-p4bus"])
    assert reply.status.state == "done" and "cannot execute" in reply.status.error


def test_environment_is_minimal(rig: Rig) -> None:
    _, status, _ = rig.run(["env"])
    keys = {line.split(b"=", 1)[0].decode() for line in status.stdout.splitlines()}
    assert keys <= {"PATH", "HOME", "LANG", "PWD"} and "PATH" in keys  # PWD: the agent's own (its cwd)


# --------------------------------------------------------------------------- several masters


def test_slots_and_workspace_lock_hold_across_two_masters(stack: Stack, ctx: zmq.Context) -> None:
    r = Rig(stack, ctx, masters=2, slots=2)
    r.start()
    a, b = r.masters
    assert a.exec("s1", ["sleep", "100"], workspace="ws1").status.state == "running"
    busy = b.exec("s2", ["sleep", "100"], workspace="ws1")
    assert isinstance(busy, proto.ErrorReply) and busy.code == "agent_busy" and "ws1" in busy.message
    assert b.exec("s3", ["sleep", "100"], workspace="ws2").status.state == "running"
    full = a.exec("s4", ["true"])
    assert isinstance(full, proto.ErrorReply) and full.code == "agent_busy" and "slots" in full.message
    # Busy is not recorded: the same cmd_id runs once a slot frees up.
    b.request(proto.Kill(req_id="k", cmd_id="s1"))
    r.sink.until_done("s1")
    # Whoever saw CmdDone may dispatch at once: the slot and the workspace are free by then.
    assert a.exec("s2", ["true"], workspace="ws1").status.state in ("running", "done")
    assert b.query("s2").state in ("running", "done")
    assert a.query("s3").state == "running"
    a.request(proto.Kill(req_id="k3", cmd_id="s3"))
    r.sink.until_done("s3")


# --------------------------------------------------------------------------- masters gone


def test_command_outlives_its_masters_and_is_reported_later(stack: Stack, ctx: zmq.Context) -> None:
    r = Rig(stack, ctx)
    r.start()
    cmd_id = new_id("c")
    r.master.exec(cmd_id, ["sh", "-c", "sleep 1; echo finished"])
    port = r.master.port
    r.master.close()
    status = r.sink.until_done(cmd_id).done.status
    assert status.stdout == b"finished\n"
    back = MasterPeer(ctx, stack.security("master"), name="m0-again", port=port)
    hello = back.handshake()  # the agent says Hello again once the master is back
    assert cmd_id in hello.recent_done
    got = back.query(cmd_id)
    assert (got.state, got.exit_code, got.stdout) == ("done", 0, b"finished\n")


def test_malformed_frames_get_errors_and_the_agent_keeps_serving(rig: Rig) -> None:
    m = rig.master
    bad: list[tuple[list[bytes], str, str]] = [
        ([os.urandom(64)], "bad_frame", ""),
        ([msgspec.msgpack.encode([1, 2, 3])], "bad_frame", ""),
        ([msgspec.msgpack.encode({"t": "launch_missiles", "req_id": "r-u"})], "unknown_type", "r-u"),
        ([msgspec.msgpack.encode({"t": "exec", "req_id": "r-x", "cmd_id": 5})], "bad_request", "r-x"),
        ([b"two", b"frames"], "bad_frame", ""),
        ([b""], "bad_frame", ""),
    ]
    for frames, code, req_id in bad:
        m.send_raw(frames)
        err = m.expect(proto.ErrorReply)
        assert (err.code, err.req_id) == (code, req_id), err
    _, status, _ = rig.run(["echo", "still here"])
    assert status.stdout == b"still here\n"
    assert rig.proc.poll() is None


# --------------------------------------------------------------------------- agent restarts


def _waiting_command(rig: Rig, cmd_id: str, tmp: Path) -> proto.CmdStarted:
    """A command that prints, then waits for the file ``go`` in ``tmp``, prints again and
    exits 7; returns its CmdStarted once its first line is spooled."""
    script = f"echo before; while [ ! -e {tmp}/go ]; do sleep 0.02; done; echo after; echo err >&2; exit 7"
    rig.master.exec(cmd_id, ["sh", "-c", script])
    started = rig.sink.until_started(cmd_id)
    out = rig.sink.transcripts[cmd_id].streams[proto.STDOUT]

    def published() -> bool:
        rig.sink.next(0.05)
        return bytes(out) == b"before\n"

    # Published, not just spooled: a SIGKILL drops what the agent's PUB has not sent yet.
    wait_for(published, what="the first line published")
    return started


def test_a_command_that_ends_while_its_agent_is_down_is_reported_with_its_real_exit(rig: Rig, tmp_path: Path) -> None:
    started = _waiting_command(rig, "durable", tmp_path)
    rig.stop(signal.SIGKILL)
    assert group_members(started.pid)  # the command outlived the agent
    (tmp_path / "go").touch()
    # Its keeper records the end with no agent there.
    wait_for(lambda: not group_members(started.pid), what="the command to end")
    wait_for(lambda: read_spool(rig, "durable", "exit")[:4] != bytes(4), what="the keeper's exit record")
    rig.start()
    # (Its CmdDone went out at start-up, likely before the new PUB was subscribed to: like any
    # restarted publisher's first events. The spool, asked by Query, is the record.)
    status = rig.master.query("durable")
    assert (status.state, status.exit_code, status.error, status.killed) == ("done", 7, "", False)
    assert status.pid == started.pid and status.duration > 0
    assert status.stdout == b"before\nafter\n" and status.stderr == b"err\n"
    assert (status.stdout_bytes, status.stderr_bytes) == (13, 4)
    assert rig.master.exec("durable", ["true"]).duplicate


def test_a_still_running_command_is_reattached_reported_and_killable(rig: Rig, tmp_path: Path) -> None:
    started = _waiting_command(rig, "attach", tmp_path)
    rig.stop(signal.SIGKILL)
    rig.start()
    assert rig.master.hellos[-1].agent.running == ["attach"]
    running = rig.master.query("attach")
    assert (running.state, running.pid) == ("running", started.pid)
    # Still the same command's slot: a resend is a duplicate, and nothing runs twice.
    assert rig.master.exec("attach", ["true"]).duplicate
    (tmp_path / "go").touch()
    # Output written after the re-attachment is published by the new agent, where the old
    # one left off (tail drops what both sent): byte-exact.
    t = rig.sink.until_done("attach")
    assert (t.done.status.exit_code, t.done.status.error) == (7, "")
    assert bytes(t.streams[proto.STDOUT]) == b"before\nafter\n" and bytes(t.streams[proto.STDERR]) == b"err\n"


def test_a_reattached_command_is_ended_by_a_kill_and_its_timeout(rig: Rig, tmp_path: Path) -> None:
    rig.master.exec("long", ["sleep", "100"])
    killed = rig.sink.until_started("long")
    rig.master.exec("timed", ["sleep", "100"], timeout=4.0)
    timed = rig.sink.until_started("timed")
    rig.stop(signal.SIGKILL)
    rig.start()
    assert rig.master.request(proto.Kill(req_id=new_id("r"), cmd_id="long")).found
    status = rig.sink.until_done("long").done.status
    assert (status.killed, status.signal, status.error) == (True, signal.SIGTERM, "")
    # The timeout counts from the command's start, not from the re-attachment. On a busy host
    # the restart itself can outlast it: then the new agent ends the command as it starts, and
    # its CmdDone may leave before the sink has joined its new PUB. Asked, not awaited.
    status = wait_for(
        lambda: next((s for s in [rig.master.query("timed")] if s.state == "done"), None), 20, "the timed command's end"
    )
    assert (status.timed_out, status.signal) == (True, signal.SIGTERM)
    assert not group_members(killed.pid) and not group_members(timed.pid)


def test_a_command_whose_keeper_was_killed_is_ended_and_recorded_as_unknown(rig: Rig) -> None:
    rig.master.exec("kept", ["sh", "-c", "echo before; sleep 100"])
    started = rig.sink.until_started("kept")
    wait_for(lambda: read_spool(rig, "kept", "stdout") == b"before\n", what="output in the spool")
    rig.stop(signal.SIGKILL)
    keeper = int(read_spool(rig, "kept", "pid").split()[2])
    os.kill(keeper, signal.SIGKILL)
    wait_for(lambda: not group_members(keeper), what="the keeper to die")
    rig.start()
    status = rig.master.query("kept")
    assert (status.state, status.killed) == ("done", True)
    assert "keeper process died" in status.error and status.stdout == b"before\n"
    wait_for(lambda: not group_members(started.pid), timeout=5, what="the orphaned group ended")


def test_one_keeper_keeps_command_after_command_and_goes_with_its_agent(rig: Rig) -> None:
    keepers = set()
    for code in (0, 3, 0):
        reply, status, _ = rig.run(["sh", "-c", f"echo {code}; exit {code}"])
        assert (status.exit_code, status.stdout) == (code, b"%d\n" % code)
        keepers.add(int(read_spool(rig, reply.cmd_id, "pid").split()[2]))
    # No fork per command: the keeper whose command ended was given the next one.
    assert len(keepers) == 1
    keeper = keepers.pop()
    assert group_members(keeper)
    rig.stop(signal.SIGKILL)
    # Waiting for its next command, it sees its agent's end of the pipe close, and exits.
    wait_for(lambda: not group_members(keeper), what="the waiting keeper to exit with its agent")


def test_a_command_spooled_by_an_agent_from_before_keepers_is_ended_as_restarted(rig: Rig) -> None:
    rig.master.exec("old", ["sleep", "100"])
    started = rig.sink.until_started("old")
    rig.stop(signal.SIGKILL)
    pid, ticks, keeper = read_spool(rig, "old", "pid").split()
    os.kill(int(keeper), signal.SIGKILL)  # what an old agent left: no keeper, a two-field pid file
    (rig.spool / "old" / "pid").write_bytes(pid + b" " + ticks + b"\n")
    rig.start()
    status = rig.master.query("old")
    assert (status.state, status.error, status.killed) == ("done", "agent restarted while running", True)
    wait_for(lambda: not group_members(started.pid), timeout=5, what="the orphaned group ended")


def test_clean_shutdown_kills_and_records_running_commands(rig: Rig) -> None:
    rig.master.exec("at-stop", ["sleep", "100"])
    started = rig.sink.until_started("at-stop")
    assert rig.stop() == 0
    done = rig.sink.until_done("at-stop").done.status
    assert done.killed and done.error == "" and done.signal == signal.SIGTERM
    assert not group_members(started.pid)
    assert msgspec.msgpack.decode(read_spool(rig, "at-stop", "result"))["killed"] is True


def test_a_clean_stop_with_on_stop_detach_leaves_commands_to_the_next_agent(
    stack: Stack, ctx: zmq.Context, tmp_path: Path
) -> None:
    """An upgrade or a unit restart (SIGTERM) with on_stop = "detach": the command lives on under
    its keeper and the next agent reports its real end, its output byte-exact."""
    rig = Rig(stack, ctx, on_stop="detach")
    rig.start()
    started = _waiting_command(rig, "upgrade", tmp_path)
    assert rig.stop() == 0
    assert group_members(started.pid), "the command died with the agent's clean stop"
    rig.start()
    assert rig.master.hellos[-1].agent.running == ["upgrade"]
    (tmp_path / "go").touch()
    t = rig.sink.until_done("upgrade")
    assert (t.done.status.exit_code, t.done.status.error, t.done.status.killed) == (7, "", False)
    assert bytes(t.streams[proto.STDOUT]) == b"before\nafter\n" and bytes(t.streams[proto.STDERR]) == b"err\n"


def test_spool_is_pruned_by_age(stack: Stack, ctx: zmq.Context) -> None:
    r = Rig(stack, ctx, spool_max_age_s=1.0)
    r.start()
    _, status, _ = r.run(["true"])
    wait_for(lambda: not (r.spool / status.cmd_id).exists(), timeout=10, what="the finished command pruned")
    assert r.master.query(status.cmd_id).state == "unknown"


# --------------------------------------------------------------------------- throughput (printed, not asserted)


def test_throughput_of_100_byte_lines_to_a_subscriber(rig: Rig) -> None:
    lines = 1_000_000
    line = b"%099d\n" % 0
    argv = ["sh", "-c", f"yes {line[:-1].decode()} | head -n {lines}"]
    cmd_id = new_id("bench")
    t0 = time.perf_counter()
    rig.master.exec(cmd_id, argv)
    t = rig.sink.until_done(cmd_id, timeout=50)
    elapsed = time.perf_counter() - t0
    got = bytes(t.streams[proto.STDOUT])
    assert got == line * lines  # zero loss
    print(
        f"\nagent throughput: {lines} lines x 100 B in {elapsed:.3f}s = {lines / elapsed:,.0f} lines/s "
        f"({len(got) / elapsed / 1e6:.0f} MB/s, {t.chunks} chunks)"
    )
