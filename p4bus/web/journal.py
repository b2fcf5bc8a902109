"""Where a job's event stream stands, as SSE ``id:``: a journal position per broker.

A job feed reads every broker's journal (broker/journals.py) and handles each event once; its
position is, per broker, the highest journal id of that broker it has handled (an event, or a
copy of one it had from another broker). Positions only grow, message after message, so "the
messages after position P" are those whose position is not covered by P in every broker
(``covered``), a prefix of the ring being covered and the rest not.

With one broker the id is that broker's journal id, as it always was. With several it is the
ids joined by dots, in the order of the brokers in the configuration ("0" where a broker was
never read). An id that does not fit the brokers configured now (an old browser's single
journal id after a second broker was added, or a list of another length) resumes nothing: the
browser gets a fresh snapshot, which is always right.
"""

from __future__ import annotations

Position = tuple[int, ...]


def encode(pos: Position) -> str:
    return ".".join(str(p) for p in pos)


def decode(raw: str, brokers: int) -> Position | None:
    """The position an SSE id names, or None if it names none for ``brokers`` brokers."""
    parts = raw.split(".")
    if len(parts) != brokers or not all(p.isdigit() and len(p) <= 19 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def covered(pos: Position, by: Position) -> bool:
    """Everything handled up to ``pos`` was handled up to ``by`` too."""
    return all(p <= b for p, b in zip(pos, by, strict=True))


def advance(pos: Position, broker: int, journal_id: int) -> Position:
    if journal_id <= pos[broker]:
        return pos
    return (*pos[:broker], journal_id, *pos[broker + 1 :])
