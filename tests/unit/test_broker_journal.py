"""The journal in-process: inline and segment bodies, rotation, crash repair, pruning, migration."""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from broker import segments as S
from broker.journal_reader import JournalReader
from broker.journal_retention import dead_segments
from broker.journal_schema import INLINE_MAX, SCHEMA, SCHEMA_VERSION, Row
from broker.journal_writer import JournalWriter
from common.config import BrokerConf
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

SEGMENT = 64 << 10  # segment_bytes() of the confs below: journal_max_bytes // 8, at its minimum
SMALL = BrokerConf(journal_max_bytes=512 << 10, prune_interval_s=3600)


class Journal:
    """A writer plus helpers, on a temp dir."""

    def __init__(self, tmp: Path, conf: BrokerConf = SMALL) -> None:
        self.path = tmp / "journal.db"
        self.dir = S.segments_dir(self.path)
        self.conf = conf
        self.sent: list[tuple[str, bytes]] = []
        self.submitted = 0  # to the current writer (whose ``done`` starts from 0)
        self.writer = self.start()

    def start(self) -> JournalWriter:
        self.submitted = 0
        w = JournalWriter(self.path, self.conf)
        w.start()
        return w

    def write(self, events: list[tuple[str, bytes]], batch: int = 7, publisher: str = "agent-1") -> None:
        """Submit in batches (memoryviews, as the proxy hands over zmq frame buffers) and wait
        until the writer has committed (or dropped) them."""
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            self.writer.submit(
                [Row(time.time(), t, "src", "ep", n, memoryview(b), publisher) for n, (t, b) in enumerate(chunk)]
            )
            self.submitted += len(chunk)
        self.sent += events
        assert self.writer.wait_done(self.submitted, 10)

    def submit(self, rows: list[Row]) -> None:
        """One batch as given (not recorded in ``sent``); waits until committed or dropped."""
        self.writer.submit(rows)
        self.submitted += len(rows)
        assert self.writer.wait_done(self.submitted, 10)

    def read(
        self, prefix: str = "", after: int = 0, limit: int = 1000, max_bytes: int = 8 << 20
    ) -> list[tuple[int, str, bytes]]:
        return [(i, t, b) for i, t, b, _p in self.read_published(prefix, after, limit, max_bytes)]

    def read_published(
        self, prefix: str = "", after: int = 0, limit: int = 1000, max_bytes: int = 8 << 20
    ) -> list[tuple[int, str, bytes, str]]:
        """Every page's events with their publishers: (id, topic, body, publisher)."""
        reader = JournalReader(self.path)
        try:
            out = []
            while True:
                page = reader.page(prefix, after, 0, limit, max_bytes)
                assert len(page.publishers) == len(page.events)
                out += [(*e, p) for e, p in zip(page.events, page.publishers, strict=True)]
                after = page.last_id
                if not page.more:
                    return out
        finally:
            reader.close()

    def segment_files(self) -> list[int]:
        return S.list_segments(self.dir)

    def segment_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir())

    def close(self) -> None:
        self.writer.stop()


@pytest.fixture
def jr(tmp_path: Path):
    j = Journal(tmp_path)
    yield j
    j.close()


def bodies(n: int, lo: int, hi: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randint(lo, hi)) for _ in range(n)]


def test_inline_and_segment_bodies_round_trip_in_pages(jr: Journal) -> None:
    sizes = [0, 1, INLINE_MAX, INLINE_MAX + 1, 4096, 40_000, 100, 60_000]
    events = [(f"log.J.c{i % 3}", os.urandom(sizes[i % len(sizes)])) for i in range(40)]
    jr.write(events)
    got = jr.read()
    assert [(t, b) for _i, t, b in got] == events
    assert [(t, b) for _i, t, b in jr.read(limit=3)] == events
    assert [(t, b) for _i, t, b in jr.read(max_bytes=1)] == events  # one event a page, never none
    assert [(t, b) for _i, t, b in jr.read("log.J.c1", limit=2)] == [e for e in events if e[0] == "log.J.c1"]
    assert jr.read(after=got[29][0]) == got[30:]
    # Only bodies over INLINE_MAX went to segments, back to back.
    assert jr.segment_bytes() == sum(len(b) for _t, b in events if len(b) > INLINE_MAX)
    c = jr.writer.counters
    assert (c.journalled, c.journal_rows, c.journal_bytes) == (40, 40, sum(len(b) for _t, b in events))


def test_segments_rotate_and_replay_crosses_their_boundaries(jr: Journal) -> None:
    big = bodies(60, 2000, 30_000)
    events = []
    for i, b in enumerate(big):
        events.append((f"log.J.c{i % 2}", b))
        events.append(("job.J", b"small %d" % i))
    jr.write(events, batch=5)
    segs = jr.segment_files()
    assert len(segs) >= 5
    # Each segment is named by the first id it holds, and no segment outgrows the limit by more
    # than one batch.
    db = sqlite3.connect(jr.path)
    for seg in segs:
        first = db.execute("SELECT min(id) FROM events WHERE seg = ?", (seg,)).fetchone()[0]
        assert first == seg
        assert (jr.dir / S.name(seg)).stat().st_size < SEGMENT + 5 * 30_000
    db.close()
    assert [(t, b) for _i, t, b in jr.read(limit=7)] == events
    assert [(t, b) for _i, t, b in jr.read("log.J.c1", limit=3)] == [e for e in events if e[0] == "log.J.c1"]
    assert [(t, b) for _i, t, b in jr.read(max_bytes=50_000)] == events


def test_restart_cuts_a_torn_tail_and_removes_a_segment_without_rows(jr: Journal) -> None:
    jr.write([("log.J.c", b) for b in bodies(10, 2000, 9000)])
    head = jr.writer._next_id
    jr.writer.stop()
    newest = jr.dir / S.name(jr.segment_files()[-1])
    good_size = newest.stat().st_size
    # A crash after writing bodies but before committing their rows: junk past the end, and a
    # segment started for a batch that never committed.
    with open(newest, "ab") as f:
        f.write(os.urandom(5000))
    (jr.dir / S.name(head)).write_bytes(os.urandom(3000))
    jr.writer = jr.start()
    assert newest.stat().st_size == good_size
    assert not (jr.dir / S.name(head)).exists()
    assert [(t, b) for _i, t, b in jr.read()] == jr.sent
    # New bodies continue right at the cut.
    jr.write([("log.J.c", b) for b in bodies(10, 2000, 9000, seed=2)])
    assert [(t, b) for _i, t, b in jr.read()] == jr.sent
    assert jr.segment_bytes() == sum(len(b) for _t, b in jr.sent)


def test_restart_drops_rows_whose_bodies_never_reached_the_disk(jr: Journal) -> None:
    sent = [("log.J.c", b) for b in bodies(10, 2000, 9000)]
    jr.write(sent)
    ids = [i for i, _t, _b in jr.read()]
    jr.writer.stop()
    newest = jr.dir / S.name(jr.segment_files()[-1])
    # A power loss: the last 2½ bodies are missing from the file although their rows committed.
    keep = sum(len(b) for _t, b in sent[:7]) + len(sent[7][1]) // 2
    os.truncate(newest, keep)
    jr.writer = jr.start()
    assert [(t, b) for _i, t, b in jr.read()] == sent[:7]
    assert jr.writer.counters.journal_rows == 7
    assert jr.writer.counters.journal_bytes == sum(len(b) for _t, b in sent[:7])
    assert newest.stat().st_size == sum(len(b) for _t, b in sent[:7])  # the half body is cut too
    more = [("log.J.c", b) for b in bodies(3, 2000, 9000, seed=3)]
    jr.write(more)
    got = jr.read()
    assert [(t, b) for _i, t, b in got] == sent[:7] + more
    assert got[7][0] > ids[-1]  # ids are never reused


def test_prune_by_size_unlinks_whole_old_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path, BrokerConf(journal_max_bytes=512 << 10, prune_interval_s=0.05))
    try:
        sent = [("log.J.c", b) for b in bodies(120, 10_000, 30_000)]  # ~2.4 MB
        j.write(sent, batch=3)
        wait_for(
            lambda: j.writer.counters.journal_bytes <= 512 << 10 and len(j.segment_files()) <= 10,
            what="pruned to the size limit",
        )
        kept = j.read()
        assert kept and [(t, b) for _i, t, b in kept] == sent[-len(kept) :]
        assert sum(len(b) for _i, _t, b in kept) > (512 << 10) - 30_000
        # On disk: the kept bodies plus less than one segment of bodies already pruned.
        assert j.segment_bytes() < (512 << 10) + SEGMENT + 3 * 30_000
        assert j.segment_files()[0] > 1
    finally:
        j.close()


def test_prune_by_age_of_everything_removes_every_segment(tmp_path: Path) -> None:
    j = Journal(tmp_path, BrokerConf(journal_max_age_s=0.3, prune_interval_s=0.05))
    try:
        j.write([("log.J.c", b) for b in bodies(20, 5000, 20_000)] + [("job.J", b"x")])
        assert j.segment_files()
        wait_for(lambda: j.writer.counters.journal_rows == 0 and not j.segment_files(), what="everything pruned")
        fresh = [("log.J.d", b) for b in bodies(3, 5000, 9000, seed=4)]
        j.write(fresh)
        got = j.read()
        assert [(t, b) for _i, t, b in got] == fresh
        assert j.segment_files() == [got[0][0]]  # a new segment, named by its first id
    finally:
        j.close()


def test_dead_segments_are_the_oldest_no_row_points_into() -> None:
    live = [1, 40, 90]
    assert dead_segments(live, 1) == []
    assert dead_segments(live, 39) == []  # row 39 is still in segment 1
    assert dead_segments(live, 40) == [1]
    assert dead_segments(live, 500) == [1, 40]  # the newest holds every row left
    assert dead_segments(live, None) == live  # an empty journal: all of them
    assert dead_segments([], None) == []


def test_reader_skips_bodies_whose_segment_is_gone(jr: Journal) -> None:
    events = [("log.J.c", b) for b in bodies(6, 2000, 3000)] + [("job.J", b"inline")]
    jr.write(events)
    ids = [i for i, _t, _b in jr.read()]
    for seg in jr.segment_files():
        (jr.dir / S.name(seg)).unlink()  # as pruning would, between a page's rows and its reads
    reader = JournalReader(jr.path)
    try:
        page = reader.page("", 0, 0, 3, 1 << 20)
        # Every row fetched (limit + 1) had its body gone: an empty page that still moves on.
        assert (page.events, page.last_id, page.more) == ([], ids[3], True)
        page = reader.page("", page.last_id, 0, 10, 1 << 20)
        assert (page.events, page.more) == ([(ids[-1], "job.J", b"inline")], False)
    finally:
        reader.close()


def test_reader_lets_go_of_unlinked_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path, BrokerConf(journal_max_age_s=0.5, prune_interval_s=0.05))
    reader = JournalReader(j.path)
    try:
        j.write([("log.J.c", b) for b in bodies(20, 5000, 20_000)])
        assert len(reader.page("", 0, 0, 100, 8 << 20).events) == 20

        def deleted_fds() -> list[str]:
            out = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(str(j.dir)) and target.endswith("(deleted)"):
                    out.append(target)
            return out

        wait_for(lambda: not j.segment_files(), what="segments pruned")
        assert deleted_fds()  # still open in the reader...
        reader.page("", 0, 0, 100, 8 << 20)
        assert deleted_fds() == []  # ...until its next page
    finally:
        reader.close()
        j.close()


def test_a_failed_segment_write_drops_the_batch_and_the_writer_goes_on(jr: Journal, monkeypatch) -> None:
    first = [("log.J.c", b) for b in bodies(3, 2000, 3000)]
    jr.write(first)
    size = jr.segment_bytes()
    real = os.writev
    calls = []

    def failing(fd, bufs):
        if not calls:
            calls.append(1)
            real(fd, [bytes(bufs[0])[:100]])  # part of it reached the file, then the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bufs)

    monkeypatch.setattr(S.os, "writev", failing)
    lost = [("log.J.c", b) for b in bodies(2, 2000, 3000, seed=5)]
    jr.submit([Row(time.time(), t, "s", "e", 1, b, "") for t, b in lost])
    assert jr.writer.counters.journal_dropped == 2
    assert jr.segment_bytes() == size  # the partial write was cut back
    after = [("log.J.c", b) for b in bodies(2, 2000, 3000, seed=6)]
    jr.write(after)
    assert jr.writer.counters.journalled == 5
    assert [(t, b) for _i, t, b in jr.read()] == first + after


def test_writev_all_resumes_short_writes(tmp_path: Path, monkeypatch) -> None:
    real = os.writev

    def dribble(fd, bufs):  # at most 7 bytes per call, as a filesystem may
        data = b"".join(bytes(b) for b in bufs)[:7]
        return real(fd, [data])

    monkeypatch.setattr(S.os, "writev", dribble)
    bufs = [os.urandom(n) for n in (0, 3, 7, 8, 20, 1, 0, 13)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert S.writev_all(fd, [memoryview(b) for b in bufs]) == sum(map(len, bufs))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bufs)


V1_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, topic TEXT NOT NULL,
    source TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX events_topic ON events(topic);
CREATE INDEX events_ts ON events(ts);
"""


def test_a_version_1_journal_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=65536")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SCHEMA)
    old = [("log.J.c", os.urandom(50_000)), ("job.J", b"small")]
    db.executemany(
        "INSERT INTO events(ts, topic, source, epoch, seq, body) VALUES (?,?,?,?,?,?)",
        [(time.time(), t, "s", "e", i, b) for i, (t, b) in enumerate(old)],
    )
    db.close()
    j = Journal(tmp_path)
    try:
        assert j.writer.counters.journal_bytes == 50_005
        new = [("log.J.c", os.urandom(30_000))]
        j.write(new)
        got = j.read()
        assert [(t, b) for _i, t, b in got] == old + new
        assert [i for i, _t, _b in got] == [1, 2, 3]
    finally:
        j.close()
    j = Journal(tmp_path)  # and opens again as the current version
    try:
        assert [(t, b) for _i, t, b in j.read()] == old + new
        # Who published the old rows nobody knows: ""; the new row's publisher is kept.
        assert [p for *_e, p in j.read_published()] == ["", "", "agent-1"]
        assert _user_version(j.path) == SCHEMA_VERSION == 3
    finally:
        j.close()


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        db.close()


def test_a_version_2_journal_gains_the_publisher_column(tmp_path: Path) -> None:
    """Version 2 as released (SCHEMA, user_version 2): its rows keep their ids and bodies and
    read back with publisher ""; events written from now on keep theirs."""
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in SCHEMA:
        db.execute(statement)
    db.execute("PRAGMA user_version=2")
    db.execute(
        "INSERT INTO events(ts, topic, source, epoch, seq, body, len) VALUES (?,?,?,?,?,?,?)",
        (time.time(), "job.J", "orchestrator-h", "e", 1, b"v2 row", 6),
    )
    db.close()
    j = Journal(tmp_path)
    try:
        j.write([("cmd.J.c", b"done")], publisher="agent-7")
        assert j.read_published() == [(1, "job.J", b"v2 row", ""), (2, "cmd.J.c", b"done", "agent-7")]
        assert _user_version(path) == 3
    finally:
        j.close()


def test_publishers_come_back_with_their_events_inline_and_in_segments(jr: Journal) -> None:
    small, big = b"inline", os.urandom(INLINE_MAX * 4)
    jr.write([("cmd.J.c1", small), ("log.J.c1", big)], publisher="agent-1")
    jr.write([("cmd.J.c2", small), ("log.J.c2", big)], publisher="forger")
    jr.write([("job.J", small)], publisher="")
    want = [
        ("cmd.J.c1", small, "agent-1"),
        ("log.J.c1", big, "agent-1"),
        ("cmd.J.c2", small, "forger"),
        ("log.J.c2", big, "forger"),
        ("job.J", small, ""),
    ]
    assert [(t, b, p) for _i, t, b, p in jr.read_published()] == want
    assert [(t, b, p) for _i, t, b, p in jr.read_published(limit=1)] == want  # page by page
    assert [(t, p) for _i, t, _b, p in jr.read_published("log.")] == [("log.J.c1", "agent-1"), ("log.J.c2", "forger")]


def test_a_failed_first_write_to_a_new_segment_removes_it(jr: Journal, monkeypatch) -> None:
    real = os.writev
    fail = [True]

    def failing(fd, bufs):
        if fail.pop() if fail else False:
            raise OSError(errno.EIO, "I/O error")
        return real(fd, bufs)

    monkeypatch.setattr(S.os, "writev", failing)
    # ids 1 (inline) and 2 (a body): the segment started for id 2 must not survive the failure,
    # since the next batch's first body is id 1 (ids of a dropped batch are reused).
    jr.submit(
        [
            Row(time.time(), "job.J", "s", "e", 1, b"small", ""),
            Row(time.time(), "log.J.c", "s", "e", 2, os.urandom(5000), ""),
        ]
    )
    assert jr.writer.counters.journal_dropped == 2
    assert jr.segment_files() == []
    sent = [("log.J.c", os.urandom(6000))]
    jr.write(sent)
    assert jr.writer.counters.journalled == 1
    assert jr.segment_files() == [1]
    jr.writer.stop()
    jr.writer = jr.start()  # recovery finds the segment's rows by its name
    assert [(t, b) for _i, t, b in jr.read()] == sent


def test_restart_repairs_an_older_segment_too(jr: Journal) -> None:
    """A power loss soon after a rotation can leave the previous segment short as well."""
    sent = [("log.J.c", b) for b in bodies(30, 5000, 9000)]
    jr.write(sent, batch=2)
    got = jr.read()
    segs = jr.segment_files()
    assert len(segs) >= 3
    jr.writer.stop()
    db = sqlite3.connect(jr.path)
    in_first = [i for (i,) in db.execute("SELECT id FROM events WHERE seg = ? ORDER BY id", (segs[0],))]
    db.close()
    first = jr.dir / S.name(segs[0])
    os.truncate(first, 100)  # only the start of its first body survived
    jr.writer = jr.start()
    lost = set(in_first)
    assert jr.read() == [e for e in got if e[0] not in lost]
    assert not first.exists()  # no row pointed at it any more


def test_a_page_never_carries_more_than_its_byte_cap(jr: Journal) -> None:
    """Bodies stop before the one that would pass ``max_bytes``; one bigger than the cap alone
    still makes a page of its own (no event is unreachable)."""
    events = [(f"log.J.c{i}", os.urandom(n)) for i, n in enumerate([300, 300, 300, 900, 100, 100])]
    jr.write(events)
    reader = JournalReader(jr.path)
    try:
        sizes, after = [], 0
        while True:
            page = reader.page("", after, 0, 100, 700)
            sizes.append([len(b) for _i, _t, b in page.events])
            after = page.last_id
            if not page.more:
                break
    finally:
        reader.close()
    assert sizes == [[300, 300], [300], [900], [100, 100]]
