"""An outsider on the network tries every socket of the bus: `python -m tests.netns.attacker
CONFIG MODE` prints, as one JSON object, what each endpoint did with its connection.

MODE ``plain``: ZeroMQ without CURVE, as any client of an insecure bus would connect.
MODE ``own-key``: CURVE with a key pair of its own that nobody authorized, and the server's real
public key pinned (public keys are public: they are the files next to the keyring).

The answer per endpoint comes from the socket monitor, not from a timeout: ``accepted`` (the
ZMTP handshake succeeded: the peer could now send requests or events), ``refused`` (TCP connected
and the handshake failed or the server dropped the connection), or ``unreached`` (no TCP
connection within the time: a network problem, which makes the test prove nothing).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from common import config as cfgmod

# endpoint name -> (the socket an honest peer of that endpoint uses, the key name of its server)
TARGETS = {
    "master_agents": (zmq.DEALER, "master"),
    "master_clients": (zmq.DEALER, "master"),
    "broker_xsub": (zmq.PUB, "broker"),
    "broker_xpub": (zmq.SUB, "broker"),
    "broker_replay": (zmq.DEALER, "broker"),
    "orchestrator_api": (zmq.DEALER, "orchestrator"),
}
WAIT_S = 10.0
FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_DISCONNECTED,
)


def attempt(ctx: zmq.Context, kind: int, endpoint: str, server_key: bytes | None) -> str:
    sock = ctx.socket(kind)
    sock.linger = 0
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_key
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    connected = False
    deadline = time.monotonic() + WAIT_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000)):
                break
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                connected = True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "accepted"
            elif connected and event in FAILED:
                return "refused"
        return "refused" if connected else "unreached"
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def main(config: str, mode: str) -> dict[str, str]:
    cfg = cfgmod.from_tree(cfgmod.read_tree(config, environ={}), config)
    keys = cfg.keys_path
    ctx = zmq.Context()
    try:
        results = {}
        for name, (kind, server) in TARGETS.items():
            key = zmq.auth.load_certificate(keys / f"{server}.key")[0] if mode == "own-key" else None
            results[name] = attempt(ctx, kind, cfg.endpoint(name), key)
        return results
    finally:
        ctx.term()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("plain", "own-key") or not Path(sys.argv[1]).is_file():
        sys.exit("usage: python -m tests.netns.attacker CONFIG plain|own-key")
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
