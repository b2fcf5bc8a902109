"""A finished command's whole output, read from its agent's spool a chunk at a time.

Interpreters that must see every line (opened-file lists) get the spool's full output when the
DONE event's capture was cut; a huge output (a big sync) keeps its head and tail. The read goes
through the orchestrator's channel one chunk after another, so the loop never waits for it;
the command's result is applied when the last chunk is in (or, if a read fails, with the cut
capture, as before whole output existed).

Nothing of a read in progress is persisted: the command is still in flight in the store until
its result is applied, so after a crash reconciliation asks the spool again and reads anew.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from common import protocol as P

# Up to this much output is fetched whole from the spool for interpreters when a capture was cut.
FULL_OUTPUT_MAX = 32 << 20

Stamp = tuple[str, str, str, int]  # (source, epoch, kind, seq) of the event that said DONE


def wanted(status: P.CmdStatus) -> bool:
    """Whether ``status``'s output is to be read whole before its result is applied."""
    return status.truncated and status.stdout_bytes + status.stderr_bytes <= FULL_OUTPUT_MAX


@dataclass
class OutputRead:
    """One command's read: stdout then stderr, each from offset 0 to the size DONE reported."""

    status: P.CmdStatus
    stamp: Stamp | None = None
    got: dict[int, bytearray] = field(default_factory=lambda: {P.STDOUT: bytearray(), P.STDERR: bytearray()})
    ended: set[int] = field(default_factory=set)  # streams the spool had no more of

    def adopt(self, stamp: Stamp | None) -> None:
        """A second DONE for the command while its read runs: its event is recorded with the
        result (when the read began from a query, which carries no stamp)."""
        if self.stamp is None:
            self.stamp = stamp

    def next(self) -> tuple[int, int, int] | None:
        """(stream, offset, size) of the next chunk to ask for; None when everything is in."""
        for stream, size in ((P.STDOUT, self.status.stdout_bytes), (P.STDERR, self.status.stderr_bytes)):
            have = len(self.got[stream])
            if have < size and stream not in self.ended:
                return stream, have, size - have
        return None

    def take(self, reply: P.FetchReply) -> None:
        """Add the chunk asked for last (one at a time); ValueError for any other."""
        data = self.got.get(reply.stream, bytearray())
        if reply.stream not in self.got or reply.offset != len(data):
            raise ValueError(f"the spool answered stream {reply.stream} at {reply.offset}, not the chunk asked for")
        if not reply.data:
            self.ended.add(reply.stream)  # the spool holds less than DONE said: keep what there is
        data += reply.data

    def result(self) -> P.CmdStatus:
        return msgspec.structs.replace(
            self.status, stdout=bytes(self.got[P.STDOUT]), stderr=bytes(self.got[P.STDERR]), truncated=False
        )
