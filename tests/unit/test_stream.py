import pytest

from common.protocol import STDERR, STDOUT, CmdStatus
from p4bus.stream import Cursor, MissingOutput, OutputAssembler

pytestmark = pytest.mark.timeout(10)


def test_cursor_in_order_overlap_duplicate_gap():
    c = Cursor()
    assert c.accept(0, b"abc") == (b"abc", None)
    assert c.accept(0, b"abc") == (b"", None)
    assert c.accept(2, b"cde") == (b"de", None)
    assert c.accept(10, b"zz") == (b"", (5, 10))
    assert c.next == 5


def test_assembler_fetches_gaps_and_tail_from_spool():
    spool = {STDOUT: bytes(range(256)) * 40, STDERR: b"err-bytes"}
    got = {STDOUT: bytearray(), STDERR: bytearray()}
    fetches = []

    def fetch(stream, offset, size):
        fetches.append((stream, offset, size))
        return spool[stream][offset : offset + min(size, 1000)], len(spool[stream])

    a = OutputAssembler(fetch, lambda s, d: got[s].extend(d))
    out = spool[STDOUT]
    a.chunk(STDOUT, 0, out[:100])
    a.chunk(STDOUT, 3000, out[3000:4000])  # 100..3000 lost in transit
    a.chunk(STDOUT, 3500, out[3500:5000])  # overlapping duplicate
    a.finish(CmdStatus(cmd_id="c", stdout_bytes=len(out), stderr_bytes=len(spool[STDERR])))
    assert bytes(got[STDOUT]) == out and bytes(got[STDERR]) == spool[STDERR]
    assert a.fetched_bytes == (3000 - 100) + (len(out) - 5000) + len(spool[STDERR])
    assert fetches[0] == (STDOUT, 100, 2900)


def test_a_gap_the_spool_cannot_fill_is_a_missing_output_error_naming_the_place():
    """A chunk (or a done status) claiming bytes the spool does not have, e.g. forged."""
    a = OutputAssembler(lambda stream, offset, size: (b"", 5), lambda s, d: None)
    a.chunk(STDOUT, 0, b"hello")
    with pytest.raises(MissingOutput, match="no stdout bytes at offset 5"):
        a.chunk(STDOUT, 10**9, b"x")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _held(grace: float = 1.0, journal=()):
    """A HoldBack over (stream, offset, data) chunks of one command, in front of an assembler
    whose spool counts what it is asked for."""
    from p4bus.stream import HoldBack

    spool = bytes(range(200))
    got = bytearray()
    a = OutputAssembler(lambda s, o, n: (spool[o : o + n], len(spool)), lambda s, d: got.extend(d))
    clock = _Clock()

    def gap(ch):
        return ("c", ch[0], a.cursors[ch[0]].next) if ch[1] > a.cursors[ch[0]].next else None

    def fills(ch, g):
        return ch[0] == g[1] and ch[1] <= g[2] < ch[1] + len(ch[2])

    repairs = []

    def repair(g):
        repairs.append(g)
        return list(journal)

    hold = HoldBack(grace, gap, fills, lambda ch: a.chunk(*ch), repair, clock)
    hold.repairs = repairs
    return hold, a, got, spool, clock


def test_a_hole_the_other_broker_fills_within_the_grace_costs_no_spool_read():
    hold, a, got, spool, clock = _held()
    hold.offer((STDOUT, 0, spool[0:10]))
    hold.offer((STDOUT, 20, spool[20:30]))  # 10..20 not here yet: held
    hold.offer((STDOUT, 30, spool[30:40]))
    hold.offer((STDERR, 0, b"e"))  # behind the hole too: events keep their order
    assert bytes(got) == spool[:10] and hold.waiting_s() == 1.0
    clock.now += 0.5
    hold.expire()  # not yet
    assert bytes(got) == spool[:10]
    hold.offer((STDOUT, 10, spool[10:20]))  # the other broker's copy
    assert bytes(got) == spool[:40] + b"e" and a.fetched_bytes == 0
    assert hold.waiting_s() is None


def test_a_hole_nobody_fills_is_read_from_the_spool_after_the_grace_and_only_then():
    hold, a, got, spool, clock = _held()
    hold.offer((STDOUT, 0, spool[0:10]))
    hold.offer((STDOUT, 20, spool[20:30]))
    hold.offer((STDOUT, 40, spool[40:50]))  # a second hole behind the first
    clock.now += 0.99
    hold.expire()
    assert a.fetched_bytes == 0
    clock.now += 0.01
    hold.expire()  # both waited the grace (they arrived together): the spool fills both
    assert bytes(got) == spool[:50] and a.fetched_bytes == 20
    hold.offer((STDOUT, 10, spool[10:20]))  # too late: a duplicate, dropped
    assert bytes(got) == spool[:50]


def test_a_filler_already_held_behind_a_later_hole_is_found():
    hold, a, got, spool, _clock = _held()
    hold.offer((STDOUT, 10, spool[10:20]))  # hole 0..10
    hold.offer((STDOUT, 30, spool[30:40]))  # hole 20..30, its filler arrives before 0..10's
    hold.offer((STDOUT, 20, spool[20:30]))
    hold.offer((STDOUT, 0, spool[0:10]))
    assert bytes(got) == spool[:40] and a.fetched_bytes == 0 and not hold.held


def test_with_no_grace_every_event_is_handled_at_once():
    hold, a, got, spool, _clock = _held(grace=0.0)
    hold.offer((STDOUT, 20, spool[20:30]))
    assert bytes(got) == spool[:30] and a.fetched_bytes == 20 and not hold.held


def test_flush_hands_over_everything_held():
    hold, _a, got, spool, _clock = _held()
    hold.offer((STDOUT, 20, spool[20:30]))
    hold.flush()
    assert bytes(got) == spool[:30] and not hold.held


def test_holes_still_open_after_the_grace_are_repaired_from_one_read_of_the_journal():
    spool = bytes(range(200))
    journal = [(STDOUT, 30, spool[30:40]), (STDOUT, 10, spool[10:20]), (STDOUT, 0, spool[0:10])]
    hold, a, got, spool, clock = _held(journal=journal)
    hold.offer((STDOUT, 0, spool[0:10]))
    hold.offer((STDOUT, 20, spool[20:30]))  # hole 10..20: in the journal
    hold.offer((STDOUT, 40, spool[40:50]))  # hole 30..40: in the journal
    hold.offer((STDOUT, 60, spool[60:70]))  # hole 50..60: nowhere but the spool
    clock.now += 1.0
    hold.expire()
    assert bytes(got) == spool[:70] and a.fetched_bytes == 10  # only 50..60 from the spool
    assert hold.repairs == [("c", STDOUT, 10)]  # one read of the journal served every hole of the stream
