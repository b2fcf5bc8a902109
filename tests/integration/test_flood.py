"""Issue 9 finding 5: 500,000 five-byte frames and then a disconnect aborted services.

The cause (libzmq 4.3, issues #3937 #4364 #4767 #4841): with ZMTP heartbeats on, a connection
whose input is stopped by a full queue and that the peer then resets is marked in error, and the
pending heartbeat timer then writes on it: "Assertion failed: !_io_error
(stream_engine_base.cpp:310)", SIGABRT. p4bus turns ZMTP heartbeats off on every socket
(common/limits.py). The first test shows the flood used here does abort a socket that still
has them (so the others could fail); the rest flood every bound socket of the real services
20 times and count aborts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import zmq

from broker.client import ReplayClient
from common.rpc import MasterClient, OrchestratorClient
from common.zmqutil import free_port
from tests.conftest import Stack, wait_for
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
    masters = MasterClient([stack.endpoint("master_clients")], timeout=5.0)
    orchestrator = OrchestratorClient([stack.endpoint("orchestrator_api")], timeout=5.0)
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


@pytest.mark.parametrize(
    ("service", "endpoint", "kind"),
    [
        ("master", "master_agents", zmq.ROUTER),
        ("master", "master_clients", zmq.ROUTER),
        ("broker", "broker_xsub", zmq.XSUB),
        ("broker", "broker_xpub", zmq.XPUB),
        ("broker", "broker_replay", zmq.ROUTER),
        ("orchestrator", "orchestrator_api", zmq.ROUTER),
    ],
)
def test_the_flood_never_aborts_a_service(services, service, endpoint, kind):
    stack, masters, orchestrator = services
    port = int(stack.endpoint(endpoint).rsplit(":", 1)[1])
    proc = stack.proc(service)
    aborts = 0
    for _ in range(ROUNDS):
        flood(port, kind)
        if proc.poll() is not None:
            aborts += 1
            break
    assert aborts == 0, f"{service} exited with {proc.returncode} (see {proc.log_path})"
    # Every service still serves.
    masters.ping(timeout=5.0)
    orchestrator.ping(timeout=5.0)
    with ReplayClient(zmq.Context.instance(), stack.endpoint("broker_replay")) as replay:
        replay.ping()
    stack.check_alive()
    assert "Assertion failed" not in proc.log_path.read_text()
