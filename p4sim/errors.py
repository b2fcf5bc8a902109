"""Exceptions that end a p4 command with an error message (exit 1)."""

from __future__ import annotations


class P4Error(Exception):
    """A failed command: each line goes to stderr (or its -s/-G equivalent), exit code 1."""

    def __init__(self, *lines: str, generic: int = 0):
        super().__init__("\n".join(lines))
        self.lines = lines
        # p4's "generic" error class, visible in -G output (1 = usage, 2 = unknown, 17 = empty).
        self.generic = generic


class UsageError(P4Error):
    def __init__(self, *lines: str):
        super().__init__(*lines, generic=1)
