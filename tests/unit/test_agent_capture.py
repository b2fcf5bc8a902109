from pathlib import Path

from agent.capture import Capture, capture_file


def test_small_output_is_kept_whole() -> None:
    c = Capture(10)
    c.feed(b"abc")
    c.feed(b"defg")
    assert (c.value(), c.truncated, c.total) == (b"abcdefg", False, 7)


def test_large_output_keeps_head_and_tail_with_a_seam() -> None:
    c = Capture(10)
    for i in range(1000):
        c.feed(b"%04d" % i)
    v = c.value()
    assert c.truncated and c.total == 4000
    assert v.startswith(b"00000") and v.endswith(b"80999")  # ...0998 0999
    assert b"[... 3990 bytes omitted ...]" in v
    assert len(c.tail) <= 2 * c.tail_limit  # memory stays bounded


def test_one_huge_feed() -> None:
    c = Capture(4)
    c.feed(memoryview(b"0123456789"))
    assert c.value() == b"01\n[... 6 bytes omitted ...]\n89"


def test_rebuilt_from_file_equals_live(tmp_path: Path) -> None:
    data = bytes(range(256)) * 50
    (tmp_path / "out").write_bytes(data)
    live = Capture(1000)
    for i in range(0, len(data), 77):
        live.feed(data[i : i + 77])
    rebuilt = capture_file(tmp_path / "out", 1000)
    assert (rebuilt.value(), rebuilt.total, rebuilt.truncated) == (live.value(), live.total, True)
    assert capture_file(tmp_path / "missing", 1000).value() == b""
