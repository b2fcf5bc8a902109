"""The agent's sandbox attacked through a real broker, master and agent (issue 9, findings 6-9):
refusals write nothing, p4 cannot be talked out of its workspace, secrets are redacted, and
what `p4bus up` writes is private."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import protocol as P
from common.rpc import MasterClient
from p4bus.harness.workspaces import SeededWorkspace, agent_settings, p4sim_path, seed_workspace
from p4bus.runner import RunResult, run_command
from tests.conftest import REPO, Stack, wait_for
from tests.integration.conftest import journalled

pytestmark = pytest.mark.timeout(120)

SECRET = "hunter2-Sekrit"


class Sandbox:
    """Broker, master and agent a1 holding one p4sim workspace ``ws`` (a table with its p4
    settings); only p4, p4sim, sh, cat and true may run."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ws: SeededWorkspace = seed_workspace(stack.tmp / "ws", "ws", "clean")
        stack.env["PATH"] = p4sim_path(stack.tmp / "bin")
        settings = agent_settings([self.ws])
        stack.tree["agent"].update(id="a1", allowed_executables=["p4", "p4sim", "sh", "cat", "true"], **settings)
        self.spool = Path(stack.tree["state_dir"]) / "spool" / "a1"
        for service in ("broker", "master", "agent"):
            stack.start(service)
        stack.wait_ready(agents=1, ids=["a1"])
        self.mc = MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5.0)

    def exec(self, argv: list[str], job_id: str = "", **spec: object) -> P.ExecReply:
        cmd = P.CmdSpec(argv=argv, **spec)  # type: ignore[arg-type]
        return self.mc.exec(cmd, agent="a1", workspace="ws", job_id=job_id)

    def run(self, argv: list[str], **spec: object) -> RunResult:
        """Run to the end through the bus (events, with Fetch for what they miss)."""
        out: dict[int, bytearray] = {P.STDOUT: bytearray(), P.STDERR: bytearray()}
        result = run_command(
            self.mc,
            self.stack.endpoint("broker_xpub"),
            P.CmdSpec(argv=argv, **spec),  # type: ignore[arg-type]
            lambda stream, data: out[stream].extend(data),
            agent="a1",
        )
        self.output = {k: bytes(v) for k, v in out.items()}
        return result

    def refused(self, argv: list[str], why: str, **spec: object) -> None:
        reply = self.exec(argv, **spec)
        assert reply.status.state == "done" and why in reply.status.error, reply.status
        assert not (self.spool / reply.cmd_id).exists()


@pytest.fixture
def sandbox(stack: Stack) -> Iterator[Sandbox]:
    s = Sandbox(stack)
    yield s
    s.mc.close()


def test_a_refused_exec_writes_nothing(sandbox: Sandbox) -> None:
    """Finding 6: refused execs with a big stdin created a spool directory each and wrote the stdin."""
    before = sorted(p.name for p in sandbox.spool.iterdir())
    marker = b"STDIN-MARKER-" * 8_000  # ~100 KB
    for i in range(200):
        attack = {"argv": ["cat"], "cwd": "/etc"} if i % 2 else {"argv": ["p4", "-x", "/etc/shadow", "fstat"]}
        reply = sandbox.exec(stdin=marker, **attack)  # type: ignore[arg-type]
        assert reply.status.state == "done" and reply.status.error, reply.status
        # Remembered, so a resend is a duplicate and a query answers (without any disk).
        assert sandbox.mc.query([reply.cmd_id], agent="a1")[0].error == reply.status.error
    assert sorted(p.name for p in sandbox.spool.iterdir()) == before
    for path in sandbox.stack.tmp.rglob("*"):
        if path.is_file():
            assert b"STDIN-MARKER" not in path.read_bytes(), f"stdin of a refused exec in {path}"


def test_p4_cannot_read_other_files_or_leave_its_workspace(sandbox: Sandbox) -> None:
    """Finding 7, each attack refused, and the same commands done right still run."""
    root = sandbox.ws.root
    sandbox.refused(["p4", "-x", "/etc/shadow", "fstat"], "p4 global option '-x' is not allowed on this agent")
    sandbox.refused(["p4", "-d", "/etc", "info"], "switches the directory")
    sandbox.refused(["p4", "-p", "127.0.0.1:1", "info"], "switches the server")
    spec = b"Client:\tws\nOwner:\tbob\nRoot:\t%s\nView:\n\t//depot/... //ws/...\n"
    sandbox.refused(["p4", "client", "-i"], "client -i spec Root '/tmp/elsewhere'", stdin=spec % b"/tmp/elsewhere")
    sandbox.refused(["p4", "info"], "environment variable PWD='/etc' differs", env={"PWD": "/etc"})
    sandbox.refused(["p4", "info"], "P4CONFIG may not be set by a request", env={"P4CONFIG": "/etc/passwd"})
    sandbox.refused(["p4", "info"], "P4TICKETS may not be set", env={"P4TICKETS": "/etc/shadow"})
    sandbox.refused(["p4", "info"], "P4PORT='127.0.0.1:1' differs", env={"P4PORT": "127.0.0.1:1"})
    sandbox.refused(["p4", "print", "-o", "/tmp/p4bus-planted", "//depot/..."], "outside the workspace roots")
    # The workspace's own settings, from the agent's config, with nothing in the request.
    info = sandbox.run(["p4", "info"], cwd=root)
    assert info.status.exit_code == 0, sandbox.output
    assert f"Current directory: {root}".encode() in sandbox.output[P.STDOUT]
    assert f"Client name: {sandbox.ws.facts['P4CLIENT']}".encode() in sandbox.output[P.STDOUT]
    # The orchestrator's way: the same values repeated are accepted.
    same = {"P4PORT": sandbox.ws.facts["P4PORT"], "PWD": root}
    assert sandbox.run(["p4", "-ztag", "info"], cwd=root, env=same).status.exit_code == 0, sandbox.output
    inside = sandbox.run(["p4", "client", "-i"], cwd=root, stdin=spec % root.encode())
    assert inside.status.exit_code == 0 and b"saved" in sandbox.output[P.STDOUT], sandbox.output


def test_known_secrets_are_redacted_from_events_spool_and_fetch(sandbox: Sandbox) -> None:
    """Finding 9: a command printing the password published and spooled it as is."""
    root = sandbox.ws.root
    learn = sandbox.run(["cat"], cwd=root, stdin=f"{SECRET}\n".encode(), stdin_secret=True)
    assert learn.status.stdout == b"***\n"
    # Printed whole, and split over two chunks (the pause is longer than the 5 ms flush).
    script = f"echo pw={SECRET}; printf %s {SECRET[:6]}; sleep 0.2; printf '%s\\n' {SECRET[6:]}; echo x{SECRET} >&2"
    done = sandbox.run(["sh", "-c", script], cwd=root)
    want = (b"pw=***\n***\n", b"x***\n")
    assert (sandbox.output[P.STDOUT], sandbox.output[P.STDERR]) == want
    assert (done.status.stdout, done.status.stderr) == want
    assert (done.status.stdout_bytes, done.status.stderr_bytes) == (len(want[0]), len(want[1]))
    cmd = sandbox.spool / done.status.cmd_id
    assert ((cmd / "stdout").read_bytes(), (cmd / "stderr").read_bytes()) == want
    chunks = journalled(sandbox.stack.endpoint("broker_replay"), sandbox.stack.security(), "log.", P.LogChunk)
    assert chunks and not [c for c in chunks if SECRET[:6].encode() in c.data]
    # The start of a secret that nothing completes goes out as it is, once held long enough.
    sandbox.run(["sh", "-c", f"printf %s {SECRET[:6]}; sleep 1.5; echo done"], cwd=root)
    assert sandbox.output[P.STDOUT] == f"{SECRET[:6]}done\n".encode()


def _private(path: Path) -> bool:
    return not stat.S_IMODE(path.stat().st_mode) & 0o077


def test_up_writes_nothing_that_others_can_read(tmp_path: Path) -> None:
    """Finding 8: under `p4bus up` the state directory was 0755 and the databases and logs 0644."""
    from common.zmqutil import free_port_base

    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # made by someone else's umask: up tightens it
    base = free_port_base(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("P4BUS_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "p4bus", "up", "--state-dir", str(state), "--port-base", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        lines: list[bytes] = []
        while not any(line.startswith(b"Try:") for line in lines):
            line = up.stdout.readline()  # type: ignore[union-attr]
            assert line, b"".join(lines)
            lines.append(line)
        done = subprocess.run(
            [sys.executable, "-m", "p4bus", "--port-base", str(base), "run", "--", "echo", "hello"],
            capture_output=True,
            cwd=REPO,
            env={**env, "P4BUS_KEY": str(state / "keys" / "operator.key_secret")},
            timeout=60,
        )
        assert done.returncode == 0 and done.stdout == b"hello\n", done.stderr
        files = [p for p in state.rglob("*") if not p.is_socket()]
        names = {p.name for p in files}
        assert {"jobs.db", "journal.db", "journal.db-wal", "broker.log", "agent.log"} <= names, names
        assert _private(state), oct(state.stat().st_mode)
        assert [str(p) for p in files if not _private(p)] == []
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(30)


def test_the_ssh_control_socket_directory_is_private_or_refused(tmp_path: Path) -> None:
    from common.ssh import SshError, private_dir

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    private_dir(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    fresh = tmp_path / "fresh"
    private_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(SshError, match="not a directory owned by this user"):
        private_dir(link)
    if os.geteuid() == 0:  # only root can give a directory away
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o777)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(SshError, match="not a directory owned by this user"):
            private_dir(theirs)


def test_the_events_of_a_refused_exec_are_published(sandbox: Sandbox) -> None:
    """One path for the orchestrator: a refusal still ends in a CmdDone."""
    reply = sandbox.exec(["p4", "-u", "admin", "info"], job_id="j1")
    replay = sandbox.stack.endpoint("broker_replay")
    done = wait_for(
        lambda: [
            e for e in journalled(replay, sandbox.stack.security(), "cmd.j1.", P.CmdDone) if e.cmd_id == reply.cmd_id
        ],
        10,
        "the CmdDone",
    )
    assert "switches the user" in done[0].status.error
