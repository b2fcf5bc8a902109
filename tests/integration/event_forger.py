"""A forger of events, as a process of its own: ``python -m tests.integration.event_forger PLAN``.

PLAN is a msgpack file: ``{"config": path, "key": name, "events": [event body, ...]}``. The
forger connects to the broker with the stack's settings and the key NAME from the stack's keys
directory (a valid key of its own; no CURVE when the stack is insecure), publishes probes until one comes back (its
connection is up: PUB drops what it sends before), then publishes each event body exactly as
given (any source, epoch, seq it likes) and waits until every one has come back through the
broker, so that the broker has forwarded them all. Prints one line and exits 0; 3 if the broker
did not forward them within the time allowed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from common import config as cfgmod
from common import keys, zmqutil
from common.auth import Security

PROBE = "job.forger-probe"
CONNECT_S = 20.0
POLL_MS = 50


def _send(pub: zmq.Socket, body: dict[str, Any]) -> None:
    pub.send_multipart([body["topic"].encode(), msgspec.msgpack.encode(body)])


def _probe(seq: int) -> dict[str, Any]:
    return {
        "t": "job",
        "topic": PROBE,
        "source": "forger",
        "epoch": "forger",
        "seq": seq,
        "ts": time.time(),
        "job_id": "p",
        "state": "x",
    }


def main(plan_path: str) -> int:
    plan = msgspec.msgpack.decode(Path(plan_path).read_bytes())
    cfg = cfgmod.load(Path(plan["config"]))
    events: list[dict[str, Any]] = plan["events"]
    security = (
        None
        if cfg.insecure
        else Security(keys.load_pair(keys.secret_path(cfg.keys_path, plan["key"])), keys.Keyring(cfg.keyring_path))
    )
    ctx = zmq.Context()
    sub = zmqutil.sub(ctx, cfg.endpoint("broker_xpub"), security, [PROBE, *{e["topic"] for e in events}])
    pub = zmqutil.pub(ctx, cfg.endpoint("broker_xsub"), security)
    deadline = time.monotonic() + CONNECT_S
    connected = False
    seq = 0
    while not connected and time.monotonic() < deadline:
        seq += 1
        _send(pub, _probe(seq))
        while sub.poll(POLL_MS):
            if sub.recv_multipart()[0] == PROBE.encode():
                connected = True
    if not connected:
        print("forger: no probe came back through the broker", file=sys.stderr)
        return 3
    waiting = {msgspec.msgpack.encode(e) for e in events}
    for body in events:
        _send(pub, body)
    while waiting and time.monotonic() < deadline:
        if sub.poll(POLL_MS):
            frames = sub.recv_multipart()
            waiting.discard(frames[1])
    ctx.destroy(linger=zmqutil.LINGER_MS)
    if waiting:
        print(f"forger: {len(waiting)} of {len(events)} events did not come back", file=sys.stderr)
        return 3
    print(f"forger: {len(events)} events forwarded by the broker")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
