"""Issue 9 finding 5: 500,000 five-byte frames and then a disconnect aborted services.

The cause (libzmq 4.3, issues #3937 #4364 #4767 #4841): with ZMTP heartbeats on, a connection
whose input is stopped by a full queue and that the peer then resets is marked in error, and the
pending heartbeat timer then writes on it: "Assertion failed: !_io_error
(stream_engine_base.cpp:310)", SIGABRT. p4bus turns ZMTP heartbeats off on every socket
(common/limits.py). The first test shows the flood used here does abort a socket that still
has them (so the others could fail); the rest flood every bound socket of the real services
20 times and count aborts. The same family on the subscriber side ("_input_stopped",
stream_engine_base.cpp:396) is a reader that stalls while its queue is full: the last tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import IO

import msgspec
import pytest
import zmq

from broker.client import ReplayClient
from common import roles
from common.rpc import MasterClient, OrchestratorClient
from common.zmqutil import free_port
from tests.conftest import REPO, Stack, wait_for
from tests.integration.attack_support import flood

pytestmark = pytest.mark.timeout(300)

ROUNDS = 20

# A ROUTER with ZMTP heartbeats, whose loop is busy for 3 s after the first frame (as a real
# service is while it decodes the first 100,000 of them): its queue fills and its input stops.
_HEARTBEAT_VICTIM = textwrap.dedent(
    """
    import sys, time, zmq
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
    sock.bind(sys.argv[1])
    print("bound", flush=True)
    while True:
        if sock.poll(100):
            time.sleep(3)
            while sock.poll(0):
                sock.recv_multipart()
    """
)


def test_the_flood_aborts_a_socket_that_has_zmtp_heartbeats():
    port = free_port()
    victim = subprocess.Popen(
        [sys.executable, "-c", _HEARTBEAT_VICTIM, f"tcp://127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert victim.stdout is not None and victim.stdout.readline() == b"bound\n"
        for _ in range(5):
            flood(port, zmq.ROUTER)
            try:
                victim.wait(timeout=3)  # past the heartbeat interval: the timer has fired
                break
            except subprocess.TimeoutExpired:
                continue
        assert victim.returncode == -6, "the flood never aborted the heartbeat socket"
        assert victim.stderr is not None and b"Assertion failed: !_io_error" in victim.stderr.read()
    finally:
        victim.kill()
        victim.wait()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("flood"))
    for name in ("broker", "master", "orchestrator"):
        stack.start(name)
    masters = MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5.0)
    orchestrator = OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security(), timeout=5.0)
    wait_for(lambda: _answers(masters) and _answers(orchestrator), 30, "the services to answer")
    yield stack, masters, orchestrator
    masters.close()
    orchestrator.close()
    stack.stop_all()


def _answers(client: MasterClient | OrchestratorClient) -> bool:
    try:
        client.ping(timeout=1.0)
        return True
    except Exception:
        return False


# Per bound socket: its service, its type, the server role its clients pin, and the role of a
# key its ZAP domain admits (the flood comes from an authorized key: an unknown one is dropped
# during the CURVE handshake, before any frame).
@pytest.mark.parametrize(
    ("service", "endpoint", "kind", "server_role", "attacker_role"),
    [
        ("master", "master_agents", zmq.ROUTER, roles.MASTER, roles.AGENT),
        ("master", "master_clients", zmq.ROUTER, roles.MASTER, roles.OPERATOR),
        ("broker", "broker_xsub", zmq.XSUB, roles.BROKER, roles.AGENT),
        ("broker", "broker_xpub", zmq.XPUB, roles.BROKER, roles.VIEWER),
        ("broker", "broker_replay", zmq.ROUTER, roles.BROKER, roles.VIEWER),
        ("orchestrator", "orchestrator_api", zmq.ROUTER, roles.ORCHESTRATOR, roles.OPERATOR),
    ],
)
def test_the_flood_never_aborts_a_service(services, service, endpoint, kind, server_role, attacker_role):
    stack, masters, orchestrator = services
    real = stack.endpoint(endpoint)
    port = int(real.rsplit(":", 1)[1])
    security = stack.security(f"flood-{attacker_role}", attacker_role)

    def authorized(sock: zmq.Socket) -> None:
        if security is not None:
            security.connect(sock, server_role, real)

    proc = stack.proc(service)
    aborts = 0
    for _ in range(ROUNDS):
        flood(port, kind, authorized)
        if proc.poll() is not None:
            aborts += 1
            break
    assert aborts == 0, f"{service} exited with {proc.returncode} (see {proc.log_path})"
    # Every service still serves.
    masters.ping(timeout=5.0)
    orchestrator.ping(timeout=5.0)
    with ReplayClient(zmq.Context.instance(), stack.endpoint("broker_replay"), stack.security()) as replay:
        replay.ping()
    stack.check_alive()
    assert "Assertion failed" not in proc.log_path.read_text()


# --------------------------------------------------------------------------- a stalled reader

# p4bus used to set ZMTP heartbeats every 2 s with a 6 s timeout. A stalled subscriber's
# connection timed out, was replaced, and the replacement (which had received nothing, so had
# not stopped its input) aborted at the first read: a stall that outlasts two such rounds.
FORMER_ZMTP_ROUND_S = 2.0 + 6.0


# A subscriber that stops reading until told, then reads what is queued. "zmtp": a plain SUB with
# the ZMTP heartbeats p4bus used to set; "p4bus": the SUB p4bus makes (common.zmqutil), with the
# same small queue so that it fills quickly.
_STALLED_SUB = textwrap.dedent(
    """
    import sys, zmq
    from common import zmqutil
    endpoint, mode = sys.argv[1:3]
    ctx = zmq.Context()
    if mode == "zmtp":
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 1000)
        sub.connect(endpoint)
    else:
        # zmqutil.sub connects at once; a connection made later gets the smaller queue.
        sub = zmqutil.sub(ctx, "tcp://127.0.0.1:1", None)
        sub.setsockopt(zmq.RCVHWM, 1000)
        sub.disconnect("tcp://127.0.0.1:1")
        sub.connect(endpoint)
    sub.recv_multipart()
    print("subscribed", flush=True)
    sys.stdin.readline()
    read = 0
    while sub.poll(1000):
        sub.recv_multipart()
        read += 1
    print(read, flush=True)
    """
)


@pytest.mark.parametrize(("mode", "aborts"), [("zmtp", True), ("p4bus", False)])
def test_a_stalled_subscriber_aborts_only_with_zmtp_heartbeats(mode, aborts):
    """A SUB whose queue filled while its reader stalled: with ZMTP heartbeats the connection
    times out meanwhile, and the first read afterwards aborts the process
    ("Assertion failed: _input_stopped (stream_engine_base.cpp:396)")."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    victim = subprocess.Popen(
        [sys.executable, "-c", _STALLED_SUB, f"tcp://127.0.0.1:{port}", mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert victim.stdin is not None and victim.stdout is not None and victim.stderr is not None
        lines = _Lines(victim.stdout)
        wait_for(lambda: (pub.send(b"probe"), lines.take(1))[1], 20, "the subscriber", interval=0.05)
        for _ in range(20_000):  # 20 times its queue
            pub.send(b"x" * 100)
        # The stall itself is the attack: it has to outlast the old heartbeat timeout.
        time.sleep(FORMER_ZMTP_ROUND_S + 1)
        victim.stdin.write(b"go\n")
        victim.stdin.flush()
        victim.wait(timeout=60)
        if aborts:
            assert victim.returncode == -6 and b"Assertion failed: _input_stopped" in victim.stderr.read()
        else:
            assert victim.returncode == 0, victim.stderr.read()
            assert lines.take(2)
    finally:
        victim.kill()
        victim.wait()
        pub.close()


class _Lines:
    """Reads a process's output lines in a thread, or stops reading it (``pause``)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._reading = threading.Event()
        self._reading.set()
        self._lock = threading.Lock()
        self._lines: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while self._reading.wait():
            line = self._stream.readline()
            if not line:
                return
            with self._lock:
                self._lines.append(line)

    def pause(self) -> None:
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def take(self, n: int) -> bool:
        with self._lock:
            return len(self._lines) >= n

    def saw(self, needle: bytes) -> bool:
        with self._lock:
            return any(needle in line for line in self._lines[-1000:])

    def states(self, needle: bytes) -> set[str]:
        with self._lock:
            found = [msgspec.json.decode(line) for line in self._lines if needle in line]
        return {ev["state"] for ev in found}
