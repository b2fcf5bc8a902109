"""Fault injection from the environment, for reliability tests of p4 callers.

P4SIM_FAULT=refused|expired       every invocation fails as if the server were down / the
                                   ticket expired (exit 1, p4's exact text)
P4SIM_FAULT_COUNT=N + P4SIM_FAULT_STATE=FILE
                                   only the first N affected invocations fail; FILE counts them
P4SIM_FAULT_ONCE=FILE              shorthand for P4SIM_FAULT_COUNT=1 P4SIM_FAULT_STATE=FILE
P4SIM_DELAY_PER_FILE=SECONDS       sleep before each per-file output line, flushing as it goes
P4SIM_DIE_AFTER_LINES=N            after N output lines, SIGKILL ourselves
"""

from __future__ import annotations

import os

from p4sim import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# Plain classes rather than dataclasses on the p4 path: importing dataclasses costs more
# than a whole p4 command should.


class OutputFaults:
    def __init__(self, delay_per_file: float = 0.0, die_after_lines: int | None = None):
        self.delay_per_file = delay_per_file
        self.die_after_lines = die_after_lines

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OutputFaults:
        die = env.get("P4SIM_DIE_AFTER_LINES")
        return cls(float(env.get("P4SIM_DELAY_PER_FILE") or 0), int(die) if die else None)

    def die(self) -> None:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _consume_budget(state_file: str, count: int) -> bool:
    """True while fewer than `count` invocations have failed; counts this one if so."""
    import fcntl

    fd = os.open(state_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # concurrent invocations must not both take the last slot
        used = int(os.read(fd, 32) or b"0")
        if used >= count:
            return False
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(used + 1).encode())
        return True
    finally:
        os.close(fd)


def connection_fault(env: Mapping[str, str], applicable: set[str]) -> str | None:
    """The fault this invocation must show ('refused' or 'expired'), if any.

    `applicable` names the fault kinds that make sense for the command (an expired ticket does
    not stop `info` or `login`); only those consume the P4SIM_FAULT_COUNT budget.
    """
    kind = env.get("P4SIM_FAULT")
    if not kind or kind not in applicable:
        return None
    state, count = env.get("P4SIM_FAULT_STATE"), env.get("P4SIM_FAULT_COUNT")
    if env.get("P4SIM_FAULT_ONCE"):
        state, count = env["P4SIM_FAULT_ONCE"], "1"
    if state and count:
        return kind if _consume_budget(state, int(count)) else None
    return kind
