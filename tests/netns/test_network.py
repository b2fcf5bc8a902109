"""The namespace helper itself: hosts reach each other and nothing else, cuts and impairments
act on one host's link, and every namespace goes away (also after a failure or a crash)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from p4bus.harness import netns
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

PORT = 7000
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()"
# Datagrams to a port nobody listens on: the count that left is what the impairment saw.
SEND_UDP = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    s.sendto(b'x', (sys.argv[1], 9))\n"
)


def _ours() -> set[str]:
    return {p.name for p in netns.NETNS_DIR.glob(f"{netns.NAME_PREFIX}*")}


@pytest.fixture
def listener(net: netns.Network):
    """A TCP listener on the bus host's address."""
    server = subprocess.Popen(
        [*net["bus"].prefix(), sys.executable, "-m", "http.server", "--bind", net["bus"].address, str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: f"{net['bus'].address}:{PORT}" in net.listening("bus"), 10, "the listener")
        yield server
    finally:
        server.kill()
        server.wait(10)


def _connects(net: netns.Network, host: str) -> bool:
    return net.run(host, sys.executable, "-c", CONNECT, net["bus"].address, str(PORT)).returncode == 0


def test_hosts_reach_each_other_and_the_machine_gets_no_address_of_theirs(net, listener):
    assert _connects(net, "agent") and _connects(net, "attacker")
    assert netns.SUBNET + "." not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert net.listening("agent") == set()


def test_a_cut_stops_one_hosts_link_until_healed(net, listener):
    net.cut("agent")
    assert not _connects(net, "agent")
    assert _connects(net, "attacker")  # only the agent's cable was pulled
    net.heal("agent")
    wait_for(lambda: _connects(net, "agent"), 10, "the healed link to carry a connection")


def test_lossy_link_drops_a_share_of_packets_and_clear_removes_it(net):
    # One datagram first, so that the bus host's MAC is known: packets that wait for ARP are
    # dropped before the queueing discipline when many wait, and would not be counted.
    assert net.run("agent", sys.executable, "-c", SEND_UDP, net["bus"].address, "1").returncode == 0
    net.lossy("agent", 0.5)
    sent = net.run("agent", sys.executable, "-c", SEND_UDP, net["bus"].address, "200")
    assert sent.returncode == 0, sent.stderr
    # Half of the 200 on their way out (below 50: about 10^-13 likely), plus half of the bus
    # host's ICMP "port unreachable" answers to those that got through (at most 100).
    assert 50 < net.dropped("agent") < 250
    net.clear("agent")
    assert net.dropped("agent") == 0


def test_every_namespace_is_removed_when_the_body_fails():
    with pytest.raises(RuntimeError, match="the test body failed"), netns.Network(["a", "b"]) as n:
        made = {n.switch, *(h.ns for h in n.hosts.values())}
        assert made <= _ours()
        raise RuntimeError("the test body failed")
    assert not made & _ours()


def test_sweep_removes_what_a_crashed_run_left_and_keeps_live_runs():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.NAME_PREFIX}{dead.pid}-crashed-switch"
    live = f"{netns.NAME_PREFIX}{os.getpid()}-running-switch"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert stale in netns.sweep_stale()
        assert stale not in _ours() and live in _ours()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
