"""Helpers for the security tests: raw sockets with or without a key, handshake outcomes
seen through ZeroMQ's socket monitor, and the JSON log lines of a service."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from common import protocol as P
from common.auth import Security

FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
}


def handshake(sock: zmq.Socket, monitor: zmq.Socket, timeout: float = 10.0) -> int:
    """The first handshake outcome on ``sock``: EVENT_HANDSHAKE_SUCCEEDED or a FAILED event."""
    deadline = time.monotonic() + timeout
    while monitor.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        event = int(recv_monitor_message(monitor)["event"])
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or event in FAILED:
            return event
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no handshake outcome within {timeout}s")


@contextmanager
def raw_client(
    endpoint: str, security: Security | None, server_role: str, kind: int = zmq.DEALER
) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A client socket (and its monitor) with ``security``'s key, pinning the real server
    key; no CURVE at all when ``security`` is None."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket()
    if security is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, security.keyring.server_key(server_role, endpoint))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, security.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, security.pair.secret)
    sock.connect(endpoint)
    try:
        yield sock, monitor
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def ask(sock: zmq.Socket, msg: P.Base, timeout: float = 10.0) -> P.Base:
    sock.send(P.encode(msg))
    assert sock.poll(int(timeout * 1000)), f"no answer to {type(msg).__name__}"
    return P.decode(sock.recv(), P.Reply)


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` in a service's log file."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == event:
                out.append(rec)
    return out
