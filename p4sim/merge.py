"""Line-based three-way merge (diff3) with p4's chunk classification.

Pure functions on lists of byte lines: no I/O, no p4 state. `resolve` feeds it the base,
theirs (source) and yours (target workspace) contents and prints the counts it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import SequenceMatcher

from p4sim import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

Lines = list[bytes]


@dataclass
class MergeResult:
    yours: int = 0
    theirs: int = 0
    both: int = 0
    conflicting: int = 0
    # Merged content; conflicting chunks are written with p4's marker lines.
    lines: Lines = field(default_factory=list)

    @property
    def chunk_line(self) -> str:
        return (
            f"Diff chunks: {self.yours} yours + {self.theirs} theirs + "
            f"{self.both} both + {self.conflicting} conflicting"
        )

    @property
    def content(self) -> bytes:
        return b"".join(self.lines)


@dataclass(frozen=True)
class MarkerLabels:
    """Names shown on the -af conflict marker lines."""

    original: str  # e.g. //depot/dev/foo.c#3
    theirs: str  # e.g. //depot/dev/foo.c#5
    yours: str  # client path, e.g. //ws/main/foo.c


def split_lines(data: bytes) -> Lines:
    return data.splitlines(keepends=True)


def _matched(base: Lines, other: Lines) -> dict[int, int]:
    """Map each base line index to the index of its matching line in `other`."""
    matcher = SequenceMatcher(None, base, other, autojunk=False)
    pairs: dict[int, int] = {}
    for b0, o0, size in matcher.get_matching_blocks():
        for k in range(size):
            pairs[b0 + k] = o0 + k
    return pairs


def _chunks(base: Lines, yours: Lines, theirs: Lines) -> Iterator[tuple[str, Lines, Lines, Lines]]:
    """Yield (kind, base_part, yours_part, theirs_part) where kind is 'stable' or 'unstable'.

    Classic diff3 walk: stable runs are base lines matched, in step, in both descendants;
    everything between two stable runs is one unstable chunk.
    """
    my, th = _matched(base, yours), _matched(base, theirs)
    i = a = b = 0
    while True:
        n = 0
        while i + n < len(base) and my.get(i + n) == a + n and th.get(i + n) == b + n:
            n += 1
        if n:
            yield "stable", base[i : i + n], yours[a : a + n], theirs[b : b + n]
            i, a, b = i + n, a + n, b + n
            continue
        j = i
        while j < len(base) and not (j in my and j in th):
            j += 1
        if j == len(base):
            if i < len(base) or a < len(yours) or b < len(theirs):
                yield "unstable", base[i:], yours[a:], theirs[b:]
            return
        yield "unstable", base[i:j], yours[a : my[j]], theirs[b : th[j]]
        i, a, b = j, my[j], th[j]


def _terminated(lines: Lines) -> Lines:
    """Marker lines must start on a fresh line even if the last content line had no newline."""
    if lines and not lines[-1].endswith(b"\n"):
        return lines[:-1] + [lines[-1] + b"\n"]
    return lines


def merge3(base: bytes, theirs: bytes, yours: bytes, labels: MarkerLabels | None = None) -> MergeResult:
    """Merge `theirs` and `yours` against their common `base`.

    Classification of each unstable chunk: only yours changed -> yours; only theirs changed ->
    theirs; both changed identically -> both; otherwise conflicting.
    """
    result = MergeResult()
    b_lines, y_lines, t_lines = split_lines(base), split_lines(yours), split_lines(theirs)
    for kind, b_part, y_part, t_part in _chunks(b_lines, y_lines, t_lines):
        if kind == "stable" or y_part == t_part == b_part:
            result.lines += y_part
        elif y_part == t_part:
            result.both += 1
            result.lines += y_part
        elif y_part == b_part:
            result.theirs += 1
            result.lines += t_part
        elif t_part == b_part:
            result.yours += 1
            result.lines += y_part
        else:
            result.conflicting += 1
            if labels is None:
                result.lines += y_part
                continue
            result.lines += [f">>>> ORIGINAL {labels.original}\n".encode()] + _terminated(b_part)
            result.lines += [f"==== THEIRS {labels.theirs}\n".encode()] + _terminated(t_part)
            result.lines += [f"==== YOURS {labels.yours}\n".encode()] + _terminated(y_part)
            result.lines.append(b"<<<<\n")
    return result
