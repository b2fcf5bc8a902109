"""The keeper: a small process that owns a command for its whole life, so that the command
outlives the agent process that started it (as Jenkins' durable tasks do).

Keepers are forked ahead of need by the agent's keeper factory (``Keepers``, started once when
the agent starts: no fork of the running agent, no interpreter start on the dispatch path). A
keeper leaves the agent's session (``setsid``), closes everything it inherited, makes the
command's pipes and waits for its command. Given one, it takes the command's lock (a flock on
its reserved exit record, agent/spool.py) while the agent fsyncs the command's spool entry, and
on the agent's GO starts the command (posix_spawn, a session of its own, output on the pipes),
records its pid, reports "ok <pid>", and then, until the command has ended:
- copies stdout/stderr into the spool files (made at the first output), taking out the
  secrets the agent sent with the command (agent/redact.py), so no secret ever reaches the
  disk; after every write it pokes the agent's ``notify`` pipe (a byte);
- writes the request's stdin; in ``lifeline`` mode (the SSH executor's session) it then keeps
  the stdin open and turns SIGUSR1/SIGUSR2 into the wrapper's ``TERM``/``KILL`` lines;
- when the leader has exited, gives what is left of its group ``grace_s`` to close the pipes,
  then SIGKILLs the group (the agent's long-standing rule for leftovers);
- fills in the ``exit`` record it reserved before starting the command, releases the
  command's lock and says DONE on the notify pipe (EOF there instead: the keeper died).
Then it waits for its next command: the agent gives a keeper that finished cleanly the next
one (up to ``MAX_USES``), so that the fork, the copy-on-write faults of a fresh process and its
teardown are not paid per command. An agent that is gone, or retires the keeper, closes
``assign``; the keeper exits at that EOF, after the command it keeps, if any.
The exclusive flock on the command's lock file is held from before the command starts until
its exit is recorded, so "is its keeper still at work?" has an exact answer that no pid
reuse can fool.

Once a command started, its keeper never talks to the agent except by those pokes: an agent
that dies or restarts changes nothing for it, and a restarted agent finds everything it needs in
the spool.
"""

from __future__ import annotations

import fcntl
import gc
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec

from agent import procgroup
from agent.redact import Redactor
from agent.spool import KeeperExit, Spool
from common import protocol as proto

BLOCK = 1 << 20
STDIN_BLOCK = 64 * 1024
# A read's tail that may be the start of a secret waits this long for the rest of it.
HOLD_S = 1.0
# Without pidfd the leader's exit is noticed by polling at this period.
POLL_S = 0.05
# The agent's word that the command's spool entry is durable: the keeper may start it.
GO = b"g"
# The keeper's last byte on the notify pipe for a command: its exit is recorded, its lock
# released, and the keeper waits for its next command. (Every other byte there is a poke.)
DONE = b"\1"
# Commands one keeper keeps, one after the other, before the agent lets it go: bounds what a
# long-lived keeper could accumulate (fragmented memory) at one fork per that many commands.
MAX_USES = 256
# A keeper's report is one write of at most this (atomic on a pipe), so one read gets it whole.
REPORT_MAX = select.PIPE_BUF
# How long a closing agent waits for its keeper factory to exit.
FACTORY_WAIT_S = 5.0
KILL_LINES = {signal.SIGUSR1: b"TERM\n", signal.SIGUSR2: b"KILL\n"}
# What the agent sends the keeper of a lifeline command for each signal it means.
LIFELINE_SIGNALS: dict[int, int] = {signal.SIGTERM: signal.SIGUSR1, signal.SIGKILL: signal.SIGUSR2}


class Plan(msgspec.Struct, frozen=True):
    argv: list[str]
    cwd: str | None
    env: dict[str, str] | None
    stdin: bytes | None
    grace_s: float
    lifeline: bool = False
    # The file argv[0] runs, as the policy resolved it; None: looked up in the PATH here.
    executable: str | None = None


class _Assignment(msgspec.Struct, frozen=True):
    cmd_id: str
    plan: Plan
    secrets: list[bytes]


@dataclass(frozen=True)
class Kept:
    """A command its keeper has started."""

    pid: int  # the command's process (its group's leader)
    keeper: int
    # Read end, the agent's: a byte per spooled write, then DONE (or EOF: the keeper died).
    notify: int
    # Called once the agent has seen DONE (True) or EOF (False) on ``notify`` and is no longer
    # reading it: the keeper is kept for another command or let go, and ``notify`` with it.
    release: Callable[[bool], None] = field(repr=False, compare=False)


class StartError(OSError):
    """The command could not be started (its message says why); nothing runs."""


@dataclass
class _Spare:
    """A keeper waiting for its next command on ``assign``."""

    pid: int
    assign: int  # write end: a length-prefixed _Assignment and GO per command; -1 once closed
    report: int  # read end: "ok <pid>" or why not, per command
    notify: int  # read end, see Kept
    uses: int = 0

    def close(self) -> None:
        """Let it go: at the EOF on ``assign`` it exits (after the command it keeps, if any)."""
        for fd in (self.assign, self.report, self.notify):
            if fd >= 0:
                os.close(fd)
        self.assign = self.report = self.notify = -1


class Keepers:
    """Keepers for one agent's commands. A keeper whose command has ended cleanly waits for the
    next one (``idle_max`` of them at most); new ones are forked ahead of need by a **factory**
    process that the agent starts once (``start``): forking a keeper from the running agent
    would copy its page tables and leave it copy-on-write faults on the dispatch path, and the
    new process waits for a CPU on a busy host; handing a command to a keeper that is already
    waiting is a pipe write that wakes it at once. The factory passes each keeper's pipes over
    a unix socket and exits when the agent closes it (or dies).

    ``spawn``, ``ready``, ``prime`` and ``close`` belong to the agent's session thread; a
    ``Kept.release`` comes from its output thread."""

    def __init__(self, spool: Spool, idle_max: int = 1) -> None:
        self.spool = spool
        self._idle_max = max(1, idle_max)
        self._idle: list[_Spare] = []  # the most recently used last: its pages are warmest
        self._lock = threading.Lock()
        self._closed = False
        self._factory: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._asked = False  # a keeper is on its way from the factory

    def ready(self) -> None:
        """Ask for a keeper to wait for the next command (without waiting for it), unless one
        already does."""
        with self._lock:
            idle = bool(self._idle)
        if not idle and not self._asked:
            self._ask()

    def prime(self) -> None:
        """Wait for the first keeper -- the factory's start-up, a fresh interpreter -- before the
        agent serves requests: a first command must not hold its main loop (and heartbeats)."""
        with self._lock:
            idle = bool(self._idle)
        if not idle:
            spare = self._receive()
            with self._lock:
                self._idle.append(spare)

    def spawn(self, cmd_id: str, plan: Plan, secrets: list[bytes]) -> Kept:
        """Hand ``cmd_id`` (already created in the spool, durably or not) to a keeper and wait
        until it has started the command and recorded its pid; raises StartError if it could not.

        The spool entry is made durable (``Spool.sync``) while the keeper takes the command's
        lock, and only then is it told to go: nothing starts that a power cut could make
        unknown."""
        data = msgspec.msgpack.encode(_Assignment(cmd_id, plan, secrets))
        spare = self._hand(len(data).to_bytes(8, "big") + data)
        unsynced: OSError | None = None
        try:
            self.spool.sync(cmd_id)
        except OSError as exc:
            unsynced = exc  # no go: the keeper starts nothing, and says so
        else:
            try:
                os.write(spare.assign, GO)
            except OSError:
                pass  # it died waiting: its report says nothing, which is reported below
        spare.uses += 1
        if unsynced is not None or plan.lifeline or spare.uses >= MAX_USES:
            # Its last command: the EOF after it lets the keeper go. A lifeline keeper is never
            # given another command, so that a signal meant for one cannot reach the next.
            os.close(spare.assign)
            spare.assign = -1
        # One read: a report is one atomic write (REPORT_MAX), or nothing and EOF if the keeper
        # died; waiting for the EOF that follows a report would cost a second wake-up.
        report = os.read(spare.report, REPORT_MAX)
        if not report.startswith(b"ok "):
            spare.close()
            if unsynced is not None:
                raise StartError(f"cannot record it durably in the spool: {unsynced}")
            raise StartError(report.decode(errors="replace") or "the command's keeper died before starting it")
        os.set_blocking(spare.notify, False)
        return Kept(int(report.split()[1]), spare.pid, spare.notify, partial(self._release, spare))

    def close(self) -> None:
        """The waiting keepers and the factory exit (EOF on their pipes and socket); keepers
        still at work exit after their commands."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for spare in idle:
            spare.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._factory is not None:
            _end(self._factory)
            self._factory = None

    def _hand(self, assignment: bytes) -> _Spare:
        """A keeper that has taken ``assignment``: a waiting one, else a new one."""
        while True:
            with self._lock:
                spare = self._idle.pop() if self._idle else None
            if spare is None:
                break
            try:
                _write_all(spare.assign, assignment)
                return spare
            except OSError:
                spare.close()  # it died while it waited (killed by hand): the next one
        spare = self._receive()
        try:
            _write_all(spare.assign, assignment)
        except OSError:
            pass  # it died before its first command: its report says nothing, which is reported
        return spare

    def _release(self, spare: _Spare, clean: bool) -> None:
        with self._lock:
            if clean and spare.assign >= 0 and not self._closed and len(self._idle) < self._idle_max:
                self._idle.append(spare)
                return
        spare.close()

    def start(self) -> None:
        """Start the factory (again, if it has died): a fresh interpreter that imports only
        this module, so that each keeper forked from it is small -- its fork, its first writes
        to inherited pages and its exit cost a fraction of what a fork of the agent does."""
        if self._sock is not None:
            self._sock.close()
        if self._factory is not None:
            _end(self._factory)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._factory = subprocess.Popen(
                _factory_argv(self.spool.root.resolve(), theirs.fileno()),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        self._sock, self._asked = ours, False

    def _ask(self) -> None:
        if self._sock is None:
            self.start()
        assert self._sock is not None
        try:
            self._sock.send(b"spare")
            self._asked = True
        except OSError as exc:
            self._sock = None
            raise StartError(f"the keeper factory is gone: {exc}") from None

    def _receive(self) -> _Spare:
        if not self._asked:
            self._ask()
        assert self._sock is not None
        self._asked = False
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self._sock, 64, 3)
        except OSError as exc:
            msg, fds = b"", []
            why = str(exc)
        else:
            why = "it ended"
        if len(fds) != 3 or not msg:
            for fd in fds:
                os.close(fd)
            self._sock = None  # started again at the next command
            raise StartError(f"the keeper factory did not hand over a keeper: {why}")
        return _Spare(int(msg), *fds)


# The factory's process: this module, from where the agent has it, and nothing else of the
# agent. No site (-S, -E): its .pth files and finders would take most of the start-up; the
# agent's own search path is handed over instead.
_CODE_ROOT = str(Path(__file__).resolve().parent.parent)
_FACTORY_MAIN = (
    "import sys; sys.path[:0] = sys.argv[1].split(sys.argv[2]); "
    "from agent import keeper; keeper.factory_entry(sys.argv[3:])"
)


def _factory_argv(spool_root: Path, fd: int) -> list[str]:
    path = [_CODE_ROOT, *(p for p in sys.path if p and os.path.isdir(p))]
    return [
        sys.executable,
        "-S",
        "-E",
        "-c",
        _FACTORY_MAIN,
        os.pathsep.join(path),
        os.pathsep,
        str(spool_root),
        str(fd),
    ]


def factory_entry(args: list[str]) -> None:
    """The factory process's main: ``args`` = [spool root, socket fd]."""
    # A terminal's ^C, a stop signal to the agent's process group: the agent's to handle. The
    # factory ends when the agent closes its socket (or dies).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    spool = Spool(args[0])
    # What every keeper would otherwise build on its first command, in pages it must copy.
    msgspec.msgpack.decode(
        msgspec.msgpack.encode(_Assignment("c", Plan(["x"], None, None, None, 0.0), [])), type=_Assignment
    )
    proto.encode(KeeperExit(0, 0.0))
    # Out of the collector's reach: a keeper's collections never write to the inherited objects.
    gc.freeze()
    factory_main(spool, socket.socket(fileno=int(args[1])))


def factory_main(spool: Spool, sock: socket.socket) -> None:
    """The factory: a keeper per request, until the agent closes the socket."""
    # Keepers are the factory's children only for a moment: they are never waited for here.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while _asked(sock):
        spare = _fork_spare(spool)
        try:
            socket.send_fds(sock, [b"%d" % spare.pid], [spare.assign, spare.report, spare.notify])
        except OSError:
            return
        finally:
            for f in (spare.assign, spare.report, spare.notify):
                os.close(f)


def _end(factory: subprocess.Popen[bytes]) -> None:
    """Reap the factory, which exits once its socket is closed; SIGKILL it if it does not."""
    try:
        factory.wait(FACTORY_WAIT_S)
    except subprocess.TimeoutExpired:
        factory.kill()
        factory.wait()


def _asked(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(64))
    except OSError:
        return False  # the agent is gone


def _fork_spare(spool: Spool) -> _Spare:
    assign_r, assign_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    notify_r, notify_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; it never returns
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its command
        signal.signal(signal.SIGINT, _ignore)
        _child(spool, keep=(assign_r, report_w, notify_w))
    for fd in (assign_r, report_w, notify_w):
        os.close(fd)
    return _Spare(pid, assign_w, report_r, notify_r)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_message(fd: int) -> bytes | None:
    """One length-prefixed message, read as soon as it is whole; None at an EOF before that."""
    data = b""
    size = 8
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
        if size == 8 and len(data) >= 8:
            size += int.from_bytes(data[:8], "big")
    return data[8:]


def _child(spool: Spool, keep: tuple[int, int, int]) -> None:
    code = 1
    try:
        os.setsid()  # out of the agent's group and session: what ends the agent spares this
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # Caught, not ignored: an exec resets caught signals, so the command gets the defaults.
            signal.signal(sig, _ignore)
        _close_all_but(keep)
        assign, report, notify = keep
        # Where a command without a cwd of its own runs (an fd: right even if it is renamed).
        home = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        while True:
            pipes = procgroup.Pipes()  # made while nothing waits for this keeper
            data = _read_message(assign)
            if data is None:
                code = 0  # the agent is gone, or let us go: nothing (more) to keep
                return
            job = msgspec.msgpack.decode(data, type=_Assignment)
            if not _keep(spool, job, pipes, assign, report, notify):
                code = 0  # it did not start, and the agent lets this keeper go
                return
            os.fchdir(home)
            try:
                os.write(notify, DONE)
            except OSError:
                pass  # the agent is gone: the EOF on assign comes next
    finally:
        os._exit(code)


def _keep(spool: Spool, job: _Assignment, pipes: procgroup.Pipes, assign: int, report: int, notify: int) -> bool:
    """Start ``job`` and keep it until its exit is recorded (True), or say why it did not start."""
    # Held until the exit is recorded. A restarted agent that found the command without a keeper
    # holds it while it records that; then there is a result, and the command must not start.
    lock = os.open(spool.keeper_lock_path(job.cmd_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keeper = _Keeper(spool, job.cmd_id, job.plan, job.secrets, pipes, assign, report, notify)
        if spool.has_result(job.cmd_id):
            keeper.say(b"a restarted agent recorded this command as not started")
            return False
        return keeper.run()
    finally:
        os.close(lock)


def _ignore(_sig: int, _frame: object) -> None:
    pass


def _close_all_but(keep: tuple[int, ...]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


class _Out:
    """One output pipe of the command and its spool file, opened at the first output: a
    command that prints nothing makes no file here (the agent's output thread makes it), so
    its end is not held up by a file creation waiting for the disk's journal."""

    def __init__(self, stream: int, fd: int, path: Path) -> None:
        self.stream = stream
        self.fd = fd
        self.path = path
        self.file = -1
        self.held = b""  # a tail that may be the start of a secret
        self.held_since = 0.0
        self.open = True
        self.failed = ""  # why writing to the spool stopped
        self.dropped = 0


class _Keeper:
    def __init__(
        self,
        spool: Spool,
        cmd_id: str,
        plan: Plan,
        secrets: list[bytes],
        pipes: procgroup.Pipes,
        assign: int,
        report: int,
        notify: int,
    ) -> None:
        self.spool = spool
        self.cmd_id = cmd_id
        self.plan = plan
        self.pipes = pipes
        self.assign = assign  # where the agent's GO comes once the spool entry is durable
        self.redactor = Redactor()
        self.redactor.secrets = list(secrets)
        self.report = report
        self.notify: int | None = notify  # None once the agent is gone: no more pokes
        self.sel = selectors.DefaultSelector()
        self.stdin = memoryview(plan.stdin or b"")
        self.cut: int | None = None
        self.proc: procgroup.Child | None = None

    def run(self) -> bool:
        """Start the command and keep it until its exit is recorded (True), or say why it did
        not start (False; the keeper then exits)."""
        try:
            if self.plan.cwd is not None:
                os.chdir(self.plan.cwd)  # the keeper's own cwd does not matter: back home after
            if os.read(self.assign, len(GO)) != GO:
                self.say(b"the agent did not confirm the command (its spool entry may not be durable)")
                return False
            with_stdin = self.plan.stdin is not None or self.plan.lifeline
            proc = procgroup.spawn_piped(self._executable(), self.plan.argv, with_stdin, self.pipes, self.plan.env)
        except (OSError, ValueError) as exc:
            self.say(str(exc).encode())
            return False
        self.proc = proc
        if self.plan.lifeline:
            for sig in KILL_LINES:  # before the agent can know of us and send one
                signal.signal(sig, self._on_kill_signal)
        try:
            self.spool.write_pid(self.cmd_id, proc.pid, procgroup.start_ticks(proc.pid), os.getpid())
        except OSError as exc:
            # Unrecorded, it could not be found again: it must not run at all.
            procgroup.signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            self.say(f"cannot record its pid in the spool: {exc}".encode())
            return False
        self.say(b"ok %d" % proc.pid)
        # Each file made before the start would be a journal entry the dispatch waits for: the
        # output files are opened (made, if the agent has not yet) at the first output.
        outs = [
            _Out(s, fd, self.spool.output_path(self.cmd_id, s))
            for s, fd in ((proto.STDOUT, proc.stdout), (proto.STDERR, proc.stderr))
        ]
        for out in outs:
            self.sel.register(out.fd, selectors.EVENT_READ, out)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin, False)
            if self.stdin:
                self.sel.register(proc.stdin, selectors.EVENT_WRITE, None)
            elif not self.plan.lifeline:
                proc.close_stdin()
        returncode = self._watch(proc, outs)
        proc.close_stdin()
        failed = [o for o in outs if o.failed]
        why = "; ".join(f"{proto.STREAM_NAMES[o.stream]}: {o.failed} ({o.dropped} bytes not spooled)" for o in failed)
        self.spool.write_exit(self.cmd_id, KeeperExit(returncode, time.time(), self.cut, why))
        for out in outs:
            if out.file >= 0:
                os.close(out.file)
        self.sel.close()
        return True

    def _executable(self) -> str:
        if self.plan.executable:
            return self.plan.executable
        argv0 = self.plan.argv[0]
        if "/" in argv0:
            return argv0
        env = os.environ if self.plan.env is None else self.plan.env
        return shutil.which(argv0, path=env.get("PATH", os.defpath)) or argv0

    def say(self, report: bytes) -> None:
        try:
            os.write(self.report, report[:REPORT_MAX])
        except OSError:
            pass  # the agent is gone: the pid file says what it would have heard

    def _watch(self, proc: procgroup.Child, outs: list[_Out]) -> int:
        pidfd: int | None = None
        try:
            pidfd = os.pidfd_open(proc.pid)
            self.sel.register(pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            pidfd = None
        leftovers_until: float | None = None
        while any(o.open for o in outs) or proc.returncode is None:
            now = time.monotonic()
            due = [o.held_since + HOLD_S for o in outs if o.held]
            if pidfd is None and proc.returncode is None:
                due.append(now + POLL_S)
            if leftovers_until is not None:
                due.append(leftovers_until)
            for key, _ in self.sel.select(max(0.0, min(due) - now) if due else None):
                if key.data == "exit":
                    self.sel.unregister(key.fd)
                    os.close(key.fd)
                    pidfd = None
                    proc.wait()
                elif key.data is None:
                    self._feed(key.fd)
                elif key.data.open:
                    self._read(key.data)
            now = time.monotonic()
            if proc.returncode is None and pidfd is None:
                proc.poll()
            if proc.returncode is not None and leftovers_until is None:
                leftovers_until = now + self.plan.grace_s
            if leftovers_until is not None and now >= leftovers_until:
                # The leader is gone but something it left behind still holds the pipes open.
                procgroup.signal_group(proc.pid, signal.SIGKILL)
                for o in outs:
                    self._drain_and_close(o)
            for o in outs:
                if o.held and now >= o.held_since + HOLD_S:
                    self._write(o, *self.redactor.apply(o.held, final=True))
        assert proc.returncode is not None
        return proc.returncode

    def _read(self, o: _Out) -> None:
        data = os.read(o.fd, BLOCK)
        if not data:
            self._write(o, o.held, b"")
            self._close(o)
            return
        if self.redactor.secrets:
            out, held = self.redactor.apply(o.held + data, final=False)
            if held and not o.held:
                o.held_since = time.monotonic()
            self._write(o, out, held)
        else:
            self._write(o, data, b"")

    def _drain_and_close(self, o: _Out) -> None:
        if not o.open:
            return
        os.set_blocking(o.fd, False)
        try:
            while o.open:
                self._read(o)
        except BlockingIOError:
            pass
        if o.held:
            self._write(o, *self.redactor.apply(o.held, final=True))
        self._close(o)

    def _close(self, o: _Out) -> None:
        if o.open:
            o.open = False
            self.sel.unregister(o.fd)
            os.close(o.fd)

    def _write(self, o: _Out, data: bytes, held: bytes) -> None:
        o.held = held
        if not data:
            return
        if o.failed:
            o.dropped += len(data)
            return
        view = memoryview(data)
        try:
            if o.file < 0:
                o.file = os.open(o.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            while view:
                view = view[os.write(o.file, view) :]
        except OSError as exc:
            # Keep draining the pipe (the command must not block on a full pipe), drop the rest.
            o.failed = exc.strerror or str(exc)
            o.dropped += len(view)
        self._poke()

    def _poke(self) -> None:
        if self.notify is None:
            return
        try:
            os.write(self.notify, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of pokes already
        except OSError:
            # The agent is gone; a restarted one polls the spool. (Not closed: the fd number
            # is this keeper's for DONE, and must not be reused by another file meanwhile.)
            self.notify = None

    def _feed(self, fd: int) -> None:
        try:
            n = os.write(fd, self.stdin[:STDIN_BLOCK])
            self.stdin = self.stdin[n:]
        except BlockingIOError:
            return
        except OSError:
            self.stdin = self.stdin[:0]  # the command closed its stdin: nothing more to give it
        if not self.stdin:
            self.sel.unregister(fd)
            if not self.plan.lifeline and self.proc is not None:
                self.proc.close_stdin()

    def _on_kill_signal(self, sig: int, _frame: object) -> None:
        """Lifeline mode: the agent asks for TERM (SIGUSR1) or KILL (SIGUSR2)."""
        stdin = self.proc.stdin if self.proc is not None else None
        if stdin is None:
            return
        if not self.stdin:
            try:
                os.write(stdin, KILL_LINES[signal.Signals(sig)])
                return
            except BlockingIOError:
                pass  # the remote is not reading: cutting the session is all that is left
            except OSError:
                return  # the session has ended
        # Request stdin is still flowing on the same pipe (a kill line would land inside it),
        # or the remote is not reading: end the local session; the remote wrapper kills the group.
        self.cut = signal.SIGTERM if sig == signal.SIGUSR1 else signal.SIGKILL
        assert self.proc is not None
        procgroup.signal_group(self.proc.pid, signal.SIGKILL)
