"""Perforce path syntax: wildcards, revision specifiers, view mappings, name escaping.

A view line maps a left pattern to a right one (`//depot/... //ws/...`); `...` matches across
directories, `*` (and `%%n`) within one. Later lines override earlier ones and a leading `-`
excludes. Depot and client paths keep p4's escapes (%40 for @ ...); local paths are unescaped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_WILDCARD = re.compile(r"\.\.\.|\*|%%[0-9]")
_ESCAPES = {"%": "%25", "@": "%40", "#": "%23", "*": "%2A"}
_UNESCAPE = re.compile(r"%(25|40|23|2A)")


def escape(name: str) -> str:
    # '%' first so the escapes themselves are not escaped again.
    return "".join(_ESCAPES.get(ch, ch) for ch in name)


def unescape(name: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def has_wildcard(path: str) -> bool:
    return bool(_WILDCARD.search(path))


def split_revspec(arg: str) -> tuple[str, str | None]:
    """'//a/...@5' -> ('//a/...', '@5'); '//a/x#head' -> ('//a/x', '#head')."""
    cut = min((i for i in (arg.find("@"), arg.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return arg, None
    return arg[:cut], arg[cut:]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a p4 path pattern; each wildcard becomes one capture group."""
    parts, pos = [], 0
    for m in _WILDCARD.finditer(pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        parts.append("(.*)" if m.group() == "..." else "([^/]*)")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts) + r"\Z")


def literal_prefix(pattern: str) -> str:
    m = _WILDCARD.search(pattern)
    return pattern if m is None else pattern[:m.start()]


def _fill(template: str, groups: tuple[str, ...]) -> str:
    it = iter(groups)
    return _WILDCARD.sub(lambda _m: next(it, ""), template)


@dataclass(frozen=True)
class ViewLine:
    left: str
    right: str
    exclude: bool = False

    @classmethod
    def parse(cls, text: str) -> "ViewLine":
        left, right = text.split()
        exclude = left.startswith("-")
        return cls(left.lstrip("-+"), right.lstrip("-+"), exclude)

    def format(self) -> str:
        return f"{'-' if self.exclude else ''}{self.left} {self.right}"


class Mapping:
    """Translate concrete paths through a view, in either direction (last matching line wins)."""

    def __init__(self, lines: list[ViewLine]):
        self.lines = lines
        self._compiled = [(pattern_regex(l.left), pattern_regex(l.right), l) for l in lines]

    def translate(self, path: str, reverse: bool = False) -> str | None:
        for left_re, right_re, line in reversed(self._compiled):
            m = (right_re if reverse else left_re).match(path)
            if m:
                if line.exclude:
                    return None
                return _fill(line.left if reverse else line.right, m.groups())
        return None

    def left_prefixes(self) -> list[str]:
        """Literal prefixes of the included left sides, for narrowing database queries."""
        return sorted({literal_prefix(l.left) for l in self.lines if not l.exclude})
