"""Perforce path syntax: wildcards, revision specifiers, view mappings, name escaping.

A view line maps a left pattern to a right one (`//depot/... //ws/...`); `...` matches across
directories, `*` (and `%%n`) within one. Later lines override earlier ones and a leading `-`
excludes. Depot and client paths keep p4's escapes (%40 for @ ...); local paths are unescaped.

The usual patterns (a literal path, or a literal prefix followed by `...`) are matched with
string operations; `re` is imported only for anything fancier, which keeps p4 startup fast.
"""

from __future__ import annotations

_ESCAPES = {"%": "%25", "@": "%40", "#": "%23", "*": "%2A"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
ELLIPSIS, STAR = "...", "*"


def escape(name: str) -> str:
    # '%' first so the escapes themselves are not escaped again.
    return "".join(_ESCAPES.get(ch, ch) for ch in name)


def unescape(name: str) -> str:
    if "%" not in name:
        return name
    out, i = [], 0
    while i < len(name):
        code = name[i : i + 3].upper()
        if code in _UNESCAPES:
            out.append(_UNESCAPES[code])
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def tokens(pattern: str) -> list[str]:
    """Split a pattern into literal strings and wildcard tokens ('...' or '*')."""
    out: list[str] = []
    literal, i = [], 0
    while i < len(pattern):
        if pattern.startswith("...", i):
            wildcard, i = ELLIPSIS, i + 3
        elif pattern[i] == "*":
            wildcard, i = STAR, i + 1
        elif pattern.startswith("%%", i) and pattern[i + 2 : i + 3].isdigit():
            wildcard, i = STAR, i + 3
        else:
            literal.append(pattern[i])
            i += 1
            continue
        if literal:
            out.append("".join(literal))
            literal = []
        out.append(wildcard)
    if literal:
        out.append("".join(literal))
    return out


def has_wildcard(path: str) -> bool:
    return any(t in (ELLIPSIS, STAR) for t in tokens(path))


def literal_prefix(pattern: str) -> str:
    parts = tokens(pattern)
    return parts[0] if parts and parts[0] not in (ELLIPSIS, STAR) else ""


def split_revspec(arg: str) -> tuple[str, str | None]:
    """'//a/...@5' -> ('//a/...', '@5'); '//a/x#head' -> ('//a/x', '#head')."""
    cut = min((i for i in (arg.find("@"), arg.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return arg, None
    return arg[:cut], arg[cut:]


class Pattern:
    """A compiled path pattern; `match` returns the wildcard captures, or None."""

    def __init__(self, text: str):
        self.text = text
        self._parts = parts = tokens(text)
        wildcards = [p for p in parts if p in (ELLIPSIS, STAR)]
        self._exact = text if not wildcards else None
        self._prefix = None
        if parts and parts[-1] == ELLIPSIS and len(wildcards) == 1:
            self._prefix = "".join(parts[:-1])
        self._regex = None
        if self._exact is None and self._prefix is None:
            import re

            self._regex = re.compile(
                "".join("(.*)" if p == ELLIPSIS else "([^/]*)" if p == STAR else re.escape(p) for p in parts) + r"\Z"
            )

    def match(self, path: str) -> tuple[str, ...] | None:
        if self._exact is not None:
            return () if path == self._exact else None
        if self._prefix is not None:
            return (path[len(self._prefix) :],) if path.startswith(self._prefix) else None
        assert self._regex is not None, "built when the pattern is neither exact nor a prefix"
        m = self._regex.match(path)
        return m.groups() if m else None

    def fill(self, captures: tuple[str, ...]) -> str:
        """This pattern with its wildcards replaced, in order, by `captures`."""
        it = iter(captures)
        return "".join(next(it, "") if p in (ELLIPSIS, STAR) else p for p in self._parts)


class ViewLine:
    __slots__ = ("exclude", "left", "right")

    def __init__(self, left: str, right: str, exclude: bool = False):
        self.left, self.right, self.exclude = left, right, exclude

    @classmethod
    def parse(cls, text: str) -> ViewLine:
        left, right = text.split()
        return cls(left.lstrip("-+"), right.lstrip("-+"), left.startswith("-"))


class Mapping:
    """Translate concrete paths through a view, in either direction (last matching line wins)."""

    def __init__(self, lines: list[ViewLine]):
        self.lines = lines
        self._compiled = [(Pattern(vl.left), Pattern(vl.right), vl) for vl in lines]

    def translate(self, path: str, reverse: bool = False) -> str | None:
        for left, right, line in reversed(self._compiled):
            source, target = (right, left) if reverse else (left, right)
            captures = source.match(path)
            if captures is not None:
                return None if line.exclude else target.fill(captures)
        return None

    def left_prefixes(self) -> list[str]:
        """Literal prefixes of the included left sides, for narrowing database queries."""
        return sorted({literal_prefix(vl.left) for vl in self.lines if not vl.exclude})
