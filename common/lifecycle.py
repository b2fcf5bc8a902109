"""Process lifecycle shared by every service: private files, and SIGINT/SIGTERM set a stop event."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

from common.config import ConfigError


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def private_state(state_dir: Path) -> None:
    """Everything this process creates from now on is its user's alone (umask 077: jobs.db,
    journal.db and their WAL, spools, logs), in a state directory of mode 0700.

    A state directory that exists already is tightened to 0700 when it is ours; one owned by
    another user is refused: whoever owns it could read or replace what we write there.
    """
    os.umask(0o077)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = state_dir.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"state directory {state_dir} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): "
            "use a directory of your own (state_dir)"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(state_dir, 0o700)
