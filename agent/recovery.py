"""Start-up recovery: commands a previous agent process left without a result.

A restarted agent cannot re-attach to such a command: its output pipes died with the old
agent (the child gets SIGPIPE on its next write), so neither its remaining output nor its exit
status can ever be observed. Each one is therefore ended by the agent's executor (locally:
SIGKILL to what is left of its process group) and recorded as finished with ``error =
RESTARTED``; ``killed`` says whether anything was still running. Its spooled output so far
stays fetchable.
"""

from __future__ import annotations

import time

from agent.capture import capture_file
from agent.executor import Executor
from agent.spool import Spool
from common import protocol as proto

RESTARTED = "agent restarted while running"


def recover(spool: Spool, agent_id: str, capture_bytes: int, executor: Executor) -> list[proto.CmdStatus]:
    out = []
    for cmd_id in spool.unfinished():
        entry = spool.read_spec(cmd_id)
        pid = spool.read_pid(cmd_id)
        killed = executor.end_orphan(*pid) if pid else False
        caps = [capture_file(spool.output_path(cmd_id, s), capture_bytes) for s in (proto.STDOUT, proto.STDERR)]
        started = entry.received_at if entry else 0.0
        now = time.time()
        status = proto.CmdStatus(
            cmd_id=cmd_id,
            job_id=entry.job_id if entry else "",
            agent=agent_id,
            state="done",
            pid=pid[0] if pid else None,
            killed=killed,
            error=RESTARTED,
            started_at=started,
            ended_at=now,
            duration=max(0.0, now - started) if started else 0.0,
            stdout_bytes=caps[0].total,
            stderr_bytes=caps[1].total,
            stdout=caps[0].value(),
            stderr=caps[1].value(),
            truncated=caps[0].truncated or caps[1].truncated,
        )
        spool.write_result(status)
        out.append(status)
    return out
