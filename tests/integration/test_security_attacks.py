"""Issue 9 findings 1-3, reproduced against real processes, and refused.

1. an ``exec`` on the master's client socket without a key, with an unknown key, and with a
   key of role viewer; 2. a rogue agent saying HELLO with a real agent's id; 3. a fake master
   holding the master's port before the master starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from common import keys, roles, zmqutil
from common import protocol as P
from common.auth import Security
from common.rpc import MasterClient, RequestError
from tests.conftest import Stack, wait_for
from tests.integration.conftest import agent_ids
from tests.integration.security_support import FAILED, ask, handshake, log_events, raw_client

pytestmark = pytest.mark.timeout(120)


def _attack(marker: Path) -> P.Exec:
    spec = P.CmdSpec(argv=["touch", str(marker)], cwd=str(marker.parent))
    return P.Exec(req_id="r-attack", cmd_id="c-attack", spec=spec, agent="a1")


def _never_ran(mc: MasterClient, marker: Path) -> None:
    assert mc.query(["c-attack"], agent="a1")[0].state == "unknown"  # the agent's spool never saw it
    assert not marker.exists()


def stack_counter(mc: MasterClient, name: str) -> int:
    return mc.stats()[name]


def _stranger(stack: Stack, name: str) -> Security:
    """A key pair that exists but is in nobody's keyring."""
    pair = keys.create(stack.tmp / "stranger-keys", name)
    return Security(pair, keys.Keyring(stack.config().keyring_path))


def test_exec_without_any_key_gets_no_connection(bus, tmp_path: Path) -> None:
    stack, mc = bus
    marker = tmp_path / "no-key"
    with raw_client(stack.endpoint("master_clients"), None, roles.MASTER) as (sock, monitor):
        sock.send(P.encode(_attack(marker)))
        assert handshake(sock, monitor) in FAILED
        assert not sock.poll(0)
    _never_ran(mc, marker)


def test_exec_with_an_unknown_key_is_refused_by_zap_and_logged(bus, tmp_path: Path) -> None:
    stack, mc = bus
    marker = tmp_path / "unknown-key"
    intruder = _stranger(stack, "intruder")
    with raw_client(stack.endpoint("master_clients"), intruder, roles.MASTER) as (sock, monitor):
        sock.send(P.encode(_attack(marker)))
        assert handshake(sock, monitor) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert not sock.poll(0)
    refused = log_events(stack.proc("master").log_path, "connection.refused")
    assert any(r["domain"] == roles.MASTER_CLIENTS and "unknown key" in r["who"] for r in refused), refused
    _never_ran(mc, marker)


def test_exec_with_a_viewer_key_is_forbidden_and_named_in_the_log(bus, tmp_path: Path) -> None:
    stack, mc = bus
    marker = tmp_path / "viewer"
    with MasterClient([stack.endpoint("master_clients")], stack.security("viewer-1", roles.VIEWER)) as viewer:
        assert agent_ids(viewer) == ["a1"]  # what a viewer may do, it can
        with pytest.raises(RequestError) as err:
            viewer.exec(_attack(marker).spec, cmd_id="c-attack", agent="a1")
    assert err.value.code == "forbidden"
    assert err.value.message == "key viewer-1 (role viewer) may not send exec"
    lines = log_events(stack.proc("master").log_path, "request.forbidden")
    assert [(r["key"], r["request"]) for r in lines] == [("viewer-1", "exec")]
    _never_ran(mc, marker)


def test_a_rogue_agent_cannot_say_hello_as_a_real_agent(bus, tmp_path: Path) -> None:
    stack, mc = bus
    (real,) = mc.agents()
    rogue = stack.security("rogue", roles.AGENT)
    with raw_client(stack.endpoint("master_agents"), rogue, roles.MASTER) as (sock, monitor):
        assert handshake(sock, monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED  # an authorized agent key...
        stolen = P.AgentInfo(agent_id="a1", host="evil", workspaces=[], slots=9, epoch="e-rogue")
        reply = ask(sock, P.Hello(proto=P.PROTOCOL_VERSION, agent=stolen, heartbeat_s=0.2))
        # ...but not a1's: refused, and a1 is still the real process.
        assert isinstance(reply, P.ErrorReply) and reply.code == "forbidden"
        assert reply.message == "key rogue may say HELLO only as agent rogue, not as a1"
        # Speaking as if registered gets it nowhere either.
        sock.send(P.encode(P.Heartbeat(running=[], free_slots=9)))
        assert isinstance(P.decode(sock.recv(), P.MasterToAgent), P.Reregister)
    lines = log_events(stack.proc("master").log_path, "agent.hello_refused")
    assert [(r["key"], r["claimed"]) for r in lines] == [("rogue", "a1")]
    (after,) = mc.agents()
    assert (after.agent_id, after.epoch, after.host) == ("a1", real.epoch, real.host)
    # Commands for a1 still reach the real agent.
    reply2 = mc.exec(P.CmdSpec(argv=["true"], cwd=str(tmp_path)), agent="a1")
    wait_for(lambda: mc.query([reply2.cmd_id], agent="a1")[0].state == "done", 20, "a1 to run the command")


def test_a_second_agent_with_the_same_id_and_another_key_is_refused_on_both_sides(bus, tmp_path: Path) -> None:
    stack, mc = bus
    (real,) = mc.agents()
    stack.security("a1-other-host", roles.AGENT)
    dup = stack.start(
        "agent",
        name="a1-dup",
        extra={"agent": {"id": "a1", "spool_dir": str(tmp_path / "dup-spool")}, "security": {"key": "a1-other-host"}},
    )
    wait_for(lambda: log_events(dup.log_path, "master refused this agent"), 20, "the duplicate's refusal line")
    master = stack.proc("master").log_path
    # The duplicate keeps saying HELLO: the master keeps refusing, and each side says so once.
    refusals = stack_counter(mc, "forbidden")
    wait_for(lambda: stack_counter(mc, "forbidden") >= refusals + 2, 20, "two more refused HELLOs")
    (line,) = log_events(dup.log_path, "master refused this agent")
    assert "key a1-other-host may say HELLO only as agent a1-other-host, not as a1" in line["error"]
    assert [(r["key"], r["claimed"]) for r in log_events(master, "agent.hello_refused")] == [("a1-other-host", "a1")]
    (after,) = mc.agents()
    assert after.epoch == real.epoch


@pytest.mark.parametrize("fake_key", ["none", "its-own"])
def test_a_fake_master_holding_the_port_first_gets_no_hello(stack: Stack, fake_key: str) -> None:
    stack.start("broker")
    ctx = zmq.Context.instance()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    if fake_key == "its-own":
        # A CURVE server with a key pair of its own: the agent pins the real master's key.
        public, secret = zmq.curve_keypair()
        fake.setsockopt(zmq.CURVE_SERVER, 1)
        fake.setsockopt(zmq.CURVE_PUBLICKEY, public)
        fake.setsockopt(zmq.CURVE_SECRETKEY, secret)
    monitor = fake.get_monitor_socket()
    zmqutil.bind_to(fake, stack.endpoint("master_agents"))
    try:
        stack.start("agent", extra={"agent": {"id": "a1"}})
        # The agent connects and fails the handshake, again and again; nothing gets through.
        for _ in range(2):
            assert handshake(fake, monitor, timeout=20) in FAILED
        assert not fake.poll(0)
    finally:
        fake.disable_monitor()
        monitor.close(linger=0)
        fake.close(linger=0)
    # The real master, once it holds the port, gets the agent.
    stack.start("master")
    with MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=5.0) as mc:
        wait_for(lambda: agent_ids(mc) == ["a1"], 20, "the agent to register with the real master")
