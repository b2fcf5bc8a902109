"""Start-up recovery: commands a previous agent process left without a result.

Every command has a keeper (agent/keeper.py) that outlives the agent, so most of them are
simply taken up again: a command whose keeper still holds its lock is still running, one whose
keeper has written its ``exit`` record ended while no agent watched. Either way the output
thread re-attaches to it (``Started`` with no notify pipe), publishes what the old agent had not
published, from the offsets it saved, and reports its real result.

What is left cannot be observed any more, and is ended by the agent's executor (locally:
SIGKILL to what is left of its process group) and recorded as finished with an ``error``:
- a command spooled by an agent from before keepers (its output pipes died with that agent):
  ``RESTARTED``;
- a command whose keeper died without an exit record (someone killed it): ``KEEPER_LOST``;
- a command whose keeper never got as far as starting it: ``NOT_STARTED`` (it did not run).
``killed`` says whether anything was still running. Its spooled output so far stays fetchable.
"""

from __future__ import annotations

import os
import time

from agent.capture import capture_file
from agent.executor import Executor
from agent.pump import Started
from agent.spool import Pids, Spool
from common import protocol as proto

RESTARTED = "agent restarted while running"
KEEPER_LOST = "the command's keeper process died while the agent was down; its exit status is unknown"
NOT_STARTED = "the agent stopped before the command started; it did not run"
# A keeper writes the pid right after starting the command; this is a generous bound on that.
PID_WAIT_S = 2.0


def _pids(spool: Spool, cmd_id: str) -> Pids | None:
    """The pid record, waiting a moment for a keeper that is still starting its command."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        pids = spool.read_pid(cmd_id)
        if pids is not None or time.monotonic() > deadline or not spool.keeper_alive(cmd_id):
            return pids
        time.sleep(0.01)  # polling a file another process is about to write; bounded


def recover(
    spool: Spool, agent_id: str, capture_bytes: int, executor: Executor
) -> tuple[list[Started], list[proto.CmdStatus]]:
    """(commands to re-attach, commands recorded as ended with an error)."""
    attach: list[Started] = []
    ended: list[proto.CmdStatus] = []
    for cmd_id in spool.unfinished():
        entry = spool.read_spec(cmd_id)
        pids = _pids(spool, cmd_id)
        lock = None
        if (
            entry is not None
            and pids is not None
            and pids.keeper is not None
            and (spool.read_exit(cmd_id) is not None or (lock := spool.take_keeper_lock(cmd_id)) is None)
        ):
            spec = entry.spec
            attach.append(
                Started(
                    cmd_id,
                    entry.job_id,
                    list(spec.argv),
                    executor.reattach(pids),
                    pids.started_at,
                    spec.timeout,
                    None,
                    spool.read_published(cmd_id),
                )
            )
            continue
        if pids is None:
            error = NOT_STARTED
        elif pids.keeper is None:
            error = RESTARTED
        else:
            error = KEEPER_LOST
        if lock is None:
            lock = spool.take_keeper_lock(cmd_id)
        killed = executor.end_orphan(pids.pid, pids.ticks) if pids else False
        caps = [capture_file(spool.output_path(cmd_id, s), capture_bytes) for s in (proto.STDOUT, proto.STDERR)]
        started = entry.received_at if entry else 0.0
        now = time.time()
        status = proto.CmdStatus(
            cmd_id=cmd_id,
            job_id=entry.job_id if entry else "",
            agent=agent_id,
            state="done",
            pid=pids.pid if pids else None,
            killed=killed,
            error=error,
            started_at=started,
            ended_at=now,
            duration=max(0.0, now - started) if started else 0.0,
            stdout_bytes=caps[0].total,
            stderr_bytes=caps[1].total,
            stdout=caps[0].value(),
            stderr=caps[1].value(),
            truncated=caps[0].truncated or caps[1].truncated,
        )
        try:
            # Written while the lock is held: a keeper still waiting for this command to be
            # handed over (its agent died meanwhile) sees the result and does not start it.
            spool.write_result(status)
        finally:
            if lock is not None:
                os.close(lock)
        ended.append(status)
    return attach, ended
