"""Identifiers: sortable, unique without coordination, readable in logs."""

from __future__ import annotations

import os
import socket
import time


def new_id(prefix: str = "") -> str:
    """Time-ordered 20-hex-digit id (ms timestamp + 40 random bits)."""
    ms = int(time.time() * 1000)
    return f"{prefix}{ms:011x}{os.urandom(5).hex()}"


def new_epoch() -> str:
    """Identifies one start of a publishing process; seq restarts at 1 with each epoch."""
    return new_id()


def host_id() -> str:
    """The host's short name: stable across restarts, which the spool's idempotency relies on.
    Two agents on one host need ids of their own in their configuration."""
    return socket.gethostname().split(".")[0]
