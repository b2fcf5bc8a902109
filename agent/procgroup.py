"""Process groups: starting, signalling and ending the local processes of commands.

Every command runs in its own session (``start_new_session``), so its pid is also its process
group id and one ``killpg`` reaches every descendant that did not deliberately escape.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess

# A bigger pipe means fewer wake-ups of the output thread per megabyte (Linux only; the
# default 64 KiB works, just slower).
PIPE_BYTES = 1 << 20


def popen_piped(
    argv: list[str], with_stdin: bool, cwd: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """argv in a session of its own, output on enlarged pipes for the pump."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        start_new_session=True,
        bufsize=0,
    )
    for f in (proc.stdout, proc.stderr):
        assert f is not None  # piped just above
        _grow_pipe(f.fileno())
    return proc


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
