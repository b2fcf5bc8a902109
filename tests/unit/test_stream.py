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
