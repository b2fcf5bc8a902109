"""Depot path helpers: p4 wildcard matching and p4's %-escapes of special characters."""

from __future__ import annotations

import functools
import re

# p4 stores @ # % * in file names escaped; `p4 opened` prints the escaped form.
_ESCAPES = {"%40": "@", "%23": "#", "%25": "%", "%2A": "*"}
_ESCAPE_RE = re.compile("|".join(_ESCAPES), re.I)


def unescape(depot_path: str) -> str:
    """The file name as a person (and a file system) sees it: `a%40b` -> `a@b`."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0).upper()], depot_path)


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\.\.\.|\*)", pattern)
    regex = "".join(".*" if part == "..." else "[^/]*" if part == "*" else re.escape(part) for part in parts)
    return re.compile(regex + r"\Z")


def matches(pattern: str, depot_path: str) -> bool:
    """p4 wildcard semantics: `...` matches anything including `/`, `*` stays inside one
    path segment. The pattern is tried against the path as printed and unescaped, so a
    blocklist entry may be written either way."""
    regex = _pattern(pattern)
    return bool(regex.match(depot_path) or regex.match(unescape(depot_path)))
