"""Socket set-up in one place: CURVE, linger, ROUTER_MANDATORY/HANDOVER, size limits, HWMs,
keepalive.

Every factory takes the process's ``Security`` (None only under ``insecure = true``): a server
socket becomes a CURVE server in its ZAP domain, a client pins the key of the server role it
connects to (common/auth.py, docs/security.md).
"""

from __future__ import annotations

import random
import socket as _socket
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import zmq

from common import limits, protocol, roles
from common.auth import Guard, Security, user_id

LINGER_MS = 500

# Per socket type: (largest inbound frame, SNDHWM, RCVHWM); common/limits.py says why.
_LIMITS: dict[int, tuple[int, int, int]] = {
    zmq.ROUTER: (limits.MAX_MSG_BYTES, limits.SERVER_SNDHWM, limits.SERVER_RCVHWM),
    zmq.DEALER: (limits.MAX_MSG_BYTES, limits.CLIENT_SNDHWM, limits.CLIENT_RCVHWM),
    zmq.XSUB: (limits.MAX_EVENT_BYTES, limits.BROKER_RCVHWM, limits.BROKER_RCVHWM),
    zmq.XPUB: (limits.MAX_SUBSCRIPTION_BYTES, limits.BROKER_SNDHWM, limits.BROKER_RCVHWM),
    zmq.PUB: (limits.MAX_SUBSCRIPTION_BYTES, limits.EVENT_HWM, limits.CLIENT_RCVHWM),
    zmq.SUB: (limits.MAX_EVENT_BYTES, limits.CLIENT_SNDHWM, limits.EVENT_HWM),
}


class BindError(RuntimeError):
    pass


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    _limit(sock)
    return sock


def _limit(sock: zmq.Socket) -> None:
    """Size limit and HWMs for the socket's type, and TCP keepalive. No ZMTP heartbeats
    (HEARTBEAT_IVL stays 0): with them libzmq 4.3 can abort the process (common/limits.py)."""
    max_msg, sndhwm, rcvhwm = _LIMITS[int(sock.type)]
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg + limits.WIRE_OVERHEAD)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, limits.TCP_KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, limits.TCP_KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, limits.TCP_KEEPALIVE_CNT)


def _bind(sock: zmq.Socket, bind: str, security: Security | None, domain: str) -> zmq.Socket:
    if security is not None:
        security.serve(sock, domain)
    try:
        bind_to(sock, bind)
    except BindError:
        sock.close(linger=0)
        raise
    return sock


def _connect(sock: zmq.Socket, connect: str, security: Security | None, server_role: str) -> zmq.Socket:
    if security is not None:
        try:
            security.connect(sock, server_role, connect)
        except Exception:
            sock.close(linger=0)
            raise
    sock.connect(connect)
    return sock


def router(
    ctx: zmq.Context,
    bind: str,
    security: Security | None,
    domain: str,
    handover: bool = True,
    sndhwm: int = limits.SERVER_SNDHWM,
) -> zmq.Socket:
    """``handover``: a peer reconnecting under its routing id takes it over at once. Off where
    peers do not choose their routing ids (the master's agents socket), so nobody can take
    over another peer's routing id. ``sndhwm``: replies queued per peer; set before binding,
    as the listener copies the options its connections get."""
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, int(handover))
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    return _bind(sock, bind, security, domain)


def dealer(
    ctx: zmq.Context,
    connect: str,
    security: Security | None,
    server_role: str,
    immediate: bool = False,
) -> zmq.Socket:
    """``immediate``: queue nothing while the peer is unreachable (a send fails with EAGAIN), so
    a reconnecting peer does not receive a backlog of stale messages. No routing id of its own:
    the server's ROUTER assigns one (so none can be claimed or taken over)."""
    sock = _common(ctx.socket(zmq.DEALER))
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    return _connect(sock, connect, security, server_role)


def pub(ctx: zmq.Context, connect: str | Sequence[str], security: Security | None) -> zmq.Socket:
    """Connected to one broker's XSUB, or to several: PUB then sends each event down every
    pipe, each with its own SNDHWM, so a dead or slow broker only drops its own copies."""
    sock = _common(ctx.socket(zmq.PUB))
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    return _connect_all(sock, connect, security)


def sub(
    ctx: zmq.Context,
    connect: str | Sequence[str],
    security: Security | None,
    prefixes: list[str] | tuple[str, ...] = ("",),
    rcvhwm: int = limits.EVENT_HWM,
) -> zmq.Socket:
    """``rcvhwm``: events queued while the application is busy; past it the broker drops this
    subscriber's events (set here, before connecting: a connection takes the value it had then)."""
    sock = _common(ctx.socket(zmq.SUB))
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for p in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, p.encode())
    return _connect_all(sock, connect, security)


def _connect_all(sock: zmq.Socket, connect: str | Sequence[str], security: Security | None) -> zmq.Socket:
    """Connect to each broker (CURVE_SERVERKEY is read at each connect, so each pins its own)."""
    for endpoint in [connect] if isinstance(connect, str) else connect:
        _connect(sock, endpoint, security, roles.BROKER)
    return sock


def proxy_end(ctx: zmq.Context, kind: int, bind: str, security: Security | None, domain: str) -> zmq.Socket:
    """The broker's XSUB (publishers connect) or XPUB (subscribers connect)."""
    return _bind(_common(ctx.socket(kind)), bind, security, domain)


def drain(sock: zmq.Socket, handler: Callable[[list[Any]], None], limit: int = 10_000, copy: bool = True) -> None:
    """Hand every message waiting on ``sock`` to ``handler`` (one poll wake-up, many messages;
    ``limit`` keeps one busy socket from starving the others). ``copy=False`` hands zmq
    Frames, which carry the sender's key name (``routed``)."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return
        handler(frames)


class Incoming(NamedTuple):
    identity: bytes  # the peer's routing id: where the reply goes
    user: str  # the key name ZAP authenticated ("" without CURVE)
    msg: Any


def routed(sock: zmq.Socket, frames: list[zmq.Frame], kind: Any, guard: Guard) -> Incoming | None:
    """A ROUTER's incoming message (frames received with copy=False), or None after answering
    the peer with the typed error -- malformed, or ``forbidden`` for the sender's role."""
    user = user_id(frames[-1]) if frames else ""
    identity, msg, error = protocol.decode_routed([f.bytes for f in frames], kind)
    if identity is not None and msg is not None:
        error = guard.refusal(user, msg)
        if error is None:
            return Incoming(identity, user, msg)
    if identity is not None and error is not None:
        try:
            sock.send_multipart([identity, protocol.encode(error)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone (ROUTER_MANDATORY) or not reading: nothing more to do
    return None


def bind_to(sock: zmq.Socket, endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise BindError(
            f"cannot bind {endpoint}: {exc.strerror} (is another p4bus service running? "
            "choose another port with --port-base or the config file)"
        ) from None


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with _socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


# free_port_base draws from here up to the kernel's ephemeral range.
PORT_FLOOR = 10000
# Processes that start stacks side by side (the test suite's workers) each draw from a band of
# their own, set with ``port_band``: "free right now" in one process says nothing of the ports
# another one has just chosen and not yet bound.
_band: tuple[int, int] | None = None


def port_band(index: int, of: int) -> None:
    """Draw from band ``index`` of ``of`` equal parts of the range free_port_base uses."""
    low, _ = _ephemeral_range()
    width = (low - PORT_FLOOR) // max(1, of)
    global _band
    _band = (PORT_FLOOR + index * width, PORT_FLOOR + (index + 1) * width)


def free_port_base(count: int = 6, host: str = "127.0.0.1") -> int:
    """A base port N such that N..N+count-1 are free right now (best effort).

    Chosen below the kernel's ephemeral range: a client reconnecting to a not-yet-bound port
    inside that range can be handed that very port as its own source port and connect to
    itself (TCP simultaneous open), and would then read its own requests as replies.
    """
    floor, ceiling = _band or (PORT_FLOOR, _ephemeral_range()[0])
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(floor, max(floor + 1, ceiling - count))
        if all(_bindable(host, p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free port range found below the ephemeral range")


def free_port(host: str = "127.0.0.1") -> int:
    return free_port_base(1, host)


def ephemeral_port(host: str = "127.0.0.1") -> int:
    """A port the kernel picks from its ephemeral range, free right now: for an HTTP server that
    stacks side by side must not meet, as it lies outside the range free_port_base draws the
    stacks' own ports from (only a client's source port could take it before it is bound)."""
    with _socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
