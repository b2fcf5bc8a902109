"""Helpers shared by the SSH tests (no tests here)."""

from __future__ import annotations

import os


def processes_with(text: str) -> list[str]:
    """Command lines of live processes containing ``text``; from /proc, as minimal hosts lack ps."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if text in args:  # zombies have an empty cmdline, so they never match
            out.append(f"{pid} {args}")
    return out
