"""The built-in name check: which files of a change would break someone's workspace.

Checks the unescaped names (what lands on disk) against a NameCheckPolicy: illegal
characters, Windows reserved device names (in any path segment, with or without an
extension), and paths that differ only in case (anywhere along the path, so `Dir/a` and
`dir/b` collide too on a case-insensitive file system).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from orchestrator.pipeline.model import NameCheckPolicy
from orchestrator.pipeline.paths import unescape


class Offender(NamedTuple):
    path: str  # as p4 printed it, so it can be passed back to p4 (revert)
    reason: str


def _segments(depot_path: str) -> list[str]:
    return unescape(depot_path)[2:].split("/")[1:]  # without the depot name


def _bad_segment(segment: str, policy: NameCheckPolicy) -> str | None:
    illegal = sorted({c for c in segment if c in policy.illegal_chars})
    if illegal:
        return "illegal character " + ", ".join(repr(c) for c in illegal)
    stem = segment.split(".", 1)[0].upper()
    if stem in {name.upper() for name in policy.reserved_names}:
        return f"reserved name {segment!r}"
    return None


def _case_collisions(paths: list[str]) -> dict[str, str]:
    """path -> reason, for every path with a prefix spelled two ways that differ only in case."""
    spellings: dict[str, set[str]] = defaultdict(set)
    prefixes: dict[str, list[str]] = {}
    for path in paths:
        parts = unescape(path).split("/")
        prefixes[path] = ["/".join(parts[: i + 1]) for i in range(3, len(parts))]
        for prefix in prefixes[path]:
            spellings[prefix.lower()].add(prefix)
    collisions = {}
    for path in paths:
        for prefix in prefixes[path]:
            others = sorted(spellings[prefix.lower()] - {prefix})
            if others:
                collisions[path] = f"differs only in case from {others[0]}"
                break
    return collisions


def find_offenders(depot_paths: Iterable[str], policy: NameCheckPolicy) -> list[Offender]:
    """Offending files in input order, each once with its first reason. Both sides of a
    case collision are offenders: which spelling should win is a person's decision."""
    paths = list(dict.fromkeys(depot_paths))
    collisions = _case_collisions(paths) if policy.case_collisions else {}
    offenders = []
    for path in paths:
        reason = next(filter(None, (_bad_segment(s, policy) for s in _segments(path))), None)
        reason = reason or collisions.get(path)
        if reason:
            offenders.append(Offender(path, reason))
    return offenders
