"""Tools for the attack tests: a process's memory, and a tiny-frame flood ended by a TCP reset.

The flood goes through a relay on loopback that the test owns: the attacking ZeroMQ socket
connects to the relay, the relay to the target. Its only job is the ending: it closes the
target's side with SO_LINGER 0, so the target sees a reset (what a peer that vanished or was
killed mid-stream looks like) while the flood has its input stopped on a full queue. Being a
plain byte relay, it works whatever security mechanism the two ends negotiate.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from tests.conftest import wait_for

FLOOD_FRAMES = 500_000
FRAME = b"hello"  # five bytes, as in the finding
# The peer socket type that each bound socket type accepts, for the attacker.
ATTACKER_TYPE = {zmq.ROUTER: zmq.DEALER, zmq.XSUB: zmq.XPUB, zmq.XPUB: zmq.XSUB}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Relay:
    """One TCP connection relayed to ``target_port`` on 127.0.0.1, until ``reset()``."""

    def __init__(self, target_port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._target_port = target_port
        self._upstream: socket.socket | None = None
        self._downstream: socket.socket | None = None
        self.forwarded = 0  # bytes attacker -> target
        self.last_progress = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._listener.settimeout(10)
        try:
            down, _ = self._listener.accept()
        except OSError:
            return
        up = socket.create_connection(("127.0.0.1", self._target_port))
        self._downstream, self._upstream = down, up
        threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()
        self._pump(down, up, True)

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while not self._done.is_set():
                data = src.recv(1 << 16)
                if not data:
                    return
                dst.sendall(data)
                if count:
                    self.forwarded += len(data)
                    self.last_progress = time.monotonic()
        except OSError:
            return

    def stalled_or_past(self, nbytes: int, quiet_s: float = 0.3) -> bool:
        """The target took ``nbytes``, or has taken nothing more for ``quiet_s`` (its queue is full)."""
        return self.forwarded >= nbytes or (self.forwarded > 0 and time.monotonic() - self.last_progress > quiet_s)

    def reset(self) -> None:
        """Close the target's side with a TCP reset (SO_LINGER 0), then the attacker's side."""
        self._done.set()
        for s in (self._upstream, self._downstream):
            if s is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        self._listener.close()


def flood(
    target_port: int,
    target_type: int,
    configure: Callable[[zmq.Socket], None] = lambda sock: None,
    frames: int = FLOOD_FRAMES,
) -> None:
    """``frames`` five-byte messages at the socket on ``target_port``, then a reset.

    ``configure`` sets up the attacking socket before it connects (e.g. its CURVE keys).
    """
    ctx = zmq.Context.instance()
    relay = Relay(target_port)
    sock = ctx.socket(ATTACKER_TYPE[target_type])
    try:
        sock.setsockopt(zmq.SNDHWM, 0)  # queue the whole flood; the relay meters it out
        sock.setsockopt(zmq.LINGER, 0)
        configure(sock)
        sock.connect(f"tcp://127.0.0.1:{relay.port}")
        if target_type == zmq.XSUB:
            # An XPUB sends only to subscribers: wait for the broker's subscription first.
            assert sock.poll(10_000), "the broker did not subscribe"
            sock.recv()
        for _ in range(frames):
            sock.send(FRAME)
        # Framed as 2 bytes of header + 5 of body: every byte through, or the target stopped reading.
        wait_for(lambda: relay.stalled_or_past(frames * 7), 30, "the flood to reach the target")
    finally:
        relay.reset()
        sock.close(linger=0)
