"""What docs/protocol.md promises, checked on the wire against real broker, master and agent processes."""

from __future__ import annotations

import msgspec
import pytest
import zmq

from broker.client import ReplayClient
from common import protocol as P
from common import roles, zmqutil
from common.auth import Security
from common.rpc import MasterClient, RequestError
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

MAX_FETCH = 4 << 20  # docs/protocol.md: "at most 4,194,304 bytes per reply"
CAPTURE_HALF = 32 * 1024  # docs/protocol.md: 32,768 bytes of head and of tail


def _run_to_end(mc: MasterClient, argv: list[str]) -> P.CmdStatus:
    reply = mc.exec(P.CmdSpec(argv=argv), agent="a1")
    return wait_for(
        lambda: next((s for s in mc.query([reply.cmd_id]) if s.state == "done"), None), 30, f"{argv} to finish"
    )


def _raw_request(endpoint: str, security: Security | None, role: str, frames: list[bytes]) -> dict:
    """Send raw frames from a DEALER, return the reply decoded as a plain msgpack map."""
    sock = zmqutil.dealer(zmq.Context.instance(), endpoint, security, role)
    try:
        sock.send_multipart(frames)
        assert sock.poll(10_000), f"no reply from {endpoint}"
        return msgspec.msgpack.decode(sock.recv())
    finally:
        sock.close(linger=0)


def test_fetch_is_capped_and_complete_only_when_nothing_remains(bus):
    _, mc = bus
    size = 6_188_895
    status = _run_to_end(mc, ["head", "-c", str(size), "/dev/zero"])
    assert status.stdout_bytes == size
    first = mc.fetch(status.cmd_id, P.STDOUT, 0, size, agent="a1")
    assert (len(first.data), first.total, first.complete) == (MAX_FETCH, size, False)
    rest = mc.fetch(status.cmd_id, P.STDOUT, MAX_FETCH, size, agent="a1")
    assert (len(rest.data), rest.total, rest.complete) == (size - MAX_FETCH, size, True)
    beyond = mc.fetch(status.cmd_id, P.STDOUT, size + 10, 100, agent="a1")
    assert (beyond.data, beyond.complete) == (b"", True)


def test_capture_keeps_head_marker_and_tail(bus):
    _, mc = bus
    status = _run_to_end(mc, ["seq", "1", "30000"])
    full = b"".join(b"%d\n" % i for i in range(1, 30001))
    omitted = len(full) - 2 * CAPTURE_HALF
    assert status.truncated and status.stdout_bytes == len(full)
    assert status.stdout == (full[:CAPTURE_HALF] + b"\n[... %d bytes omitted ...]\n" % omitted + full[-CAPTURE_HALF:])
    short = _run_to_end(mc, ["seq", "1", "10"])
    assert (short.stdout, short.truncated) == (b"".join(b"%d\n" % i for i in range(1, 11)), False)


def test_exec_reply_comes_when_started_not_when_done(bus):
    _, mc = bus
    reply = mc.exec(P.CmdSpec(argv=["sleep", "60"]), agent="a1")
    assert reply.status.state == "running" and reply.status.pid and reply.status.exit_code is None
    killed = mc.kill(reply.cmd_id)
    assert killed.found
    done = wait_for(lambda: next((s for s in mc.query([reply.cmd_id]) if s.state == "done"), None), 20, "kill")
    assert done.killed


def test_kill_of_an_unknown_command(bus):
    _, mc = bus
    # The master cannot tell which agent to ask.
    with pytest.raises(RequestError) as err:
        mc.kill("never-ran")
    assert err.value.code == "unknown_cmd"
    # The agent is named: killing what it does not have is a no-op that says so.
    reply = mc.kill("never-ran", agent="a1")
    assert not reply.found and reply.status is not None and reply.status.state == "unknown"
    # Killing a finished command is not an error either.
    status = _run_to_end(mc, ["true"])
    again = mc.kill(status.cmd_id, agent="a1")
    assert again.found and again.status is not None and again.status.exit_code == 0


def test_omitted_defaults_on_the_wire(bus):
    stack, _ = bus
    reply = _raw_request(
        stack.endpoint("master_clients"),
        stack.security(),
        roles.MASTER,
        [P.encode(P.Query(req_id="q1", cmd_ids=["never-ran"], agent="a1"))],
    )
    assert reply["t"] == "query_r" and reply["req_id"] == "q1"
    # state "unknown" is the default: the key is absent.
    assert reply["statuses"] == [{"cmd_id": "never-ran", "agent": "a1"}]


def test_job_id_is_dash_in_the_topic_and_empty_in_the_body(bus):
    stack, mc = bus
    status = _run_to_end(mc, ["echo", "hi"])
    prefix = f"cmd.-.{status.cmd_id}"
    with ReplayClient(zmq.Context.instance(), stack.endpoint("broker_replay"), stack.security()) as replay:

        def journalled() -> list[tuple[int, str, bytes]] | None:
            events = [e for page in replay.pages(prefix) for e in page]
            return events if len(events) == 2 else None

        events = wait_for(journalled, 20, "cmd_started and cmd_done in the journal")
    bodies = [msgspec.msgpack.decode(body) for _id, _topic, body in events]
    assert [(b["t"], b["topic"]) for b in bodies] == [("cmd_started", prefix), ("cmd_done", prefix)]
    assert [b["job_id"] for b in bodies] == ["", ""]
    assert "job_id" not in bodies[1]["status"]  # CmdStatus.job_id "" is the default: omitted


@pytest.mark.parametrize(
    "endpoint_name,invalid",
    [
        ("master_clients", {"t": "query", "req_id": "p-bad", "cmd_ids": "not a list"}),
        ("broker_replay", {"t": "replay", "req_id": "p-bad", "after": "not an int"}),
    ],
)
def test_error_replies_echo_the_req_id_they_can_recover(bus, endpoint_name, invalid):
    stack, _ = bus
    endpoint = stack.endpoint(endpoint_name)
    server = roles.MASTER if endpoint_name == "master_clients" else roles.BROKER
    # A REQ socket's envelope: an empty delimiter frame, then the message.
    reply = _raw_request(endpoint, stack.security(), server, [b"", P.encode(P.Ping(req_id="p-env"))])
    assert (reply["t"], reply["code"], reply["req_id"]) == ("error", "bad_frame", "p-env")
    reply = _raw_request(endpoint, stack.security(), server, [msgspec.msgpack.encode(invalid)])
    assert (reply["t"], reply["code"], reply["req_id"]) == ("error", "bad_request", "p-bad")
    reply = _raw_request(
        endpoint, stack.security(), server, [msgspec.msgpack.encode({"t": "nope", "req_id": "p-type"})]
    )
    assert (reply["code"], reply["req_id"]) == ("unknown_type", "p-type")
    # Unknown keys are ignored.
    reply = _raw_request(
        endpoint, stack.security(), server, [msgspec.msgpack.encode({"t": "ping", "req_id": "p-ok", "extra": 1})]
    )
    assert (reply["t"], reply["req_id"]) == ("pong", "p-ok")
