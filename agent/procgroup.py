"""Process groups: starting, signalling and ending the local processes of commands.

Every command runs in its own session (``setsid``), so its pid is also its process
group id and one ``killpg`` reaches every descendant that did not deliberately escape.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Mapping

# A bigger pipe means fewer wake-ups of the output thread per megabyte (Linux only; the
# default 64 KiB works, just slower).
PIPE_BYTES = 1 << 20


class Pipes:
    """A command's stdio, made before its keeper is given the command (off the dispatch path):
    stdout and stderr pipes (enlarged), a stdin pipe and /dev/null. Every fd is close-on-exec;
    the spawn dup2()s the child's ends onto 0-2."""

    def __init__(self) -> None:
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self.in_r, self.in_w = os.pipe2(os.O_CLOEXEC)
        self.null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in (self.out_r, self.err_r):
            _grow_pipe(fd)


class Child:
    """A command started by ``spawn_piped``: its pid, our ends of its pipes, its exit status
    (``returncode`` as subprocess has it: negative = killed by that signal)."""

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.stdin = stdin  # write end, None once closed (or never piped)
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        code = self._reap(0)
        assert code is not None
        return code

    def close_stdin(self) -> None:
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


# Python ignores these; a command must start with the defaults (as subprocess' restore_signals).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def spawn_piped(
    executable: str, argv: list[str], with_stdin: bool, pipes: Pipes, env: Mapping[str, str] | None = None
) -> Child:
    """argv in a session of its own, output on ``pipes``, in the caller's working directory.

    posix_spawn (a vfork and exec in glibc) rather than subprocess.Popen: no fork of the
    caller's page tables, no Python in the child, and an exec that fails raises here (OSError),
    so "cannot execute" is known before anything ran. Only the caller's ends stay open here."""
    stdin = pipes.in_r if with_stdin else pipes.null
    try:
        pid = os.posix_spawn(
            executable,
            argv,
            os.environ if env is None else env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, pipes.out_w, 1),
                (os.POSIX_SPAWN_DUP2, pipes.err_w, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT_SIGNALS,
        )
    except OSError:
        for fd in (pipes.in_w, pipes.out_r, pipes.err_r):
            os.close(fd)
        raise
    finally:
        for fd in (pipes.in_r, pipes.out_w, pipes.err_w, pipes.null):
            os.close(fd)
    if not with_stdin:
        os.close(pipes.in_w)
    return Child(pid, pipes.in_w if with_stdin else None, pipes.out_r, pipes.err_r)


def _grow_pipe(fd: int) -> None:
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is None:
        return
    try:
        fcntl.fcntl(fd, setsz, PIPE_BYTES)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size for an unprivileged agent: keep the default


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), to recognise a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def end_orphan(pid: int, ticks: int | None) -> bool:
    """SIGKILL what is left of a command a previous agent started; True if anything was left.

    Safe against pid reuse: the group is signalled only if its leader is still our process
    (same start time, possibly a zombie) or gone while the group lives on -- Linux never hands
    out a pid that is still some group's id, so such a group is still ours.
    """
    now = start_ticks(pid)
    ours = now is None or ticks is None or now == ticks
    return ours and group_alive(pid) and signal_group(pid, signal.SIGKILL)
