"""A bus spread over hosts with their own addresses: real binds beyond loopback, a job across
hosts, a partitioned agent link that heals, and an impaired one; nothing lost, nothing twice."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from agent.spool import Spool
from common import protocol as P
from common.config import PORT_OFFSETS
from p4bus.harness import netns
from tests.conftest import wait_for
from tests.e2e.test_cli_jobs import _sections, streams
from tests.e2e.test_reliability import _assert_each_command_ran_once
from tests.netns.conftest import CORE, NetJobs, spread_over_hosts

pytestmark = pytest.mark.timeout(300)

PARTITION_S = 10.0


def _assert_tail_is_the_spool(hosts: NetJobs, job_id: str) -> None:
    """`p4bus tail` on the bus host prints every command's output exactly as the agent's spool
    on the agent host holds it: nothing missing, nothing twice."""
    view = hosts.view(job_id)
    assert view is not None
    tail = hosts.cli("tail", job_id)
    assert tail.returncode == 0, tail.stderr
    bodies = [body for _, body in _sections(tail.stdout)]
    assert len(bodies) == len(view.timeline)
    for run, body in zip(view.timeline, bodies, strict=True):
        out, err = streams(body)
        assert (out, err) == (hosts.spool(run, "stdout"), hosts.spool(run, "stderr")), run.stage


def _assert_done_once_each(hosts: NetJobs, name: str, job_id: str) -> None:
    view = hosts.wait_state(job_id)
    assert view.state == "DONE", (view.stage, view.reason)
    _assert_each_command_ran_once(hosts, name, view)
    assert all(r.attempt == 1 and r.state == "DONE" for r in view.timeline), view.timeline
    _assert_tail_is_the_spool(hosts, job_id)


def test_services_listen_on_the_bus_hosts_address_and_a_job_runs_across_hosts(hosts):
    net = hosts.net
    hosts.workspace("ws1", "clean")
    hosts.start()
    bus = net["bus"].address
    # Exactly the six endpoints, on the bus host's own address, nothing on 0.0.0.0; on loopback
    # only each service's metrics endpoint (unauthenticated HTTP: docs/security.md).
    metrics = {
        name: f"127.0.0.1:{urlsplit(hosts.stack.metrics_url(name) or '').port}" for name in hosts.stack.current()
    }
    on_bus = {f"{bus}:{hosts.stack.port_base + off}" for off in PORT_OFFSETS.values()}
    assert net.listening("bus") == on_bus | {metrics[name] for name in CORE}
    assert net.listening("agent") == {metrics[name] for name in hosts.stack.current() if name not in CORE}
    # The agent reaches the master and the broker from its own address.
    established = net.run("agent", "ss", "-Htn", "state", "established").stdout.split()
    for name in ("master_agents", "broker_xsub"):
        assert f"{bus}:{hosts.stack.port_base + PORT_OFFSETS[name]}" in established
    assert all(a.startswith(net["agent"].address + ":") for a in established[2::4])
    job_id = hosts.submit("ws1")
    _assert_done_once_each(hosts, "ws1", job_id)


@dataclass(frozen=True)
class Partitioned:
    hosts: NetJobs
    job_id: str
    view: P.JobView
    cut_at: float
    healed_at: float


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partitioned]:
    """One job whose agent's link is cut for 10 s while it syncs, then healed; run once and
    looked at by the tests below."""
    with spread_over_hosts(tmp_path_factory.mktemp("partition")) as hosts:
        # About 6 s of sync: it starts before the cut and ends during it, so the rest of its
        # output and its end are published while nothing can reach the broker (TCP holds them,
        # or they are lost with the connection: the spool has them either way).
        hosts.workspace("ws1", "big:60", env={"P4SIM_DELAY_PER_FILE": "0.1"})
        hosts.start()
        job_id = hosts.submit("ws1")

        # The p4 wrapper logs a command as it starts: no round trip between the start and the cut.
        wait_for(lambda: any(a.startswith("sync ") for a in hosts.executions("ws1")), 60, "the sync to start")
        hosts.net.cut("agent")
        cut_at = time.time()
        # The cut is real: the master stops hearing the agent and drops it from its list.
        wait_for(lambda: not hosts.listed_agents(), PARTITION_S, "the master to lose the agent", interval=0.2)
        # The partition's length is what is tested, so it is a fixed wait, not a condition.
        time.sleep(max(0.0, cut_at + PARTITION_S - time.time()))
        hosts.net.heal("agent")
        healed_at = time.time()
        yield Partitioned(hosts, job_id, hosts.wait_state(job_id), cut_at, healed_at)


def test_a_10s_partition_of_the_agents_link_during_a_job_heals_with_nothing_lost_or_run_twice(partitioned):
    hosts, view = partitioned.hosts, partitioned.view
    assert view.state == "DONE", (view.stage, view.reason)
    sync = next(r for r in view.timeline if r.stage == "SYNC")
    assert partitioned.cut_at < sync.ended_at < partitioned.healed_at, "the sync was meant to end inside the cut"
    _assert_each_command_ran_once(hosts, "ws1", view)
    assert all(r.attempt == 1 and r.state == "DONE" for r in view.timeline), view.timeline
    assert [a["agent_id"] for a in hosts.listed_agents()] == ["agent-1"]
    # Every line of every command's spool is in the tail exactly once (in which section:
    # test_a_command_end_lost_in_a_cut_is_tailed_in_its_own_section).
    tail = hosts.cli("tail", partitioned.job_id)
    assert tail.returncode == 0, tail.stderr
    spooled = Counter(
        line for r in view.timeline for s in ("stdout", "stderr") for line in hosts.spool(r, s).splitlines()
    )
    assert _output_lines(tail.stdout, partitioned.job_id) == spooled


def test_a_command_end_lost_in_a_cut_is_tailed_in_its_own_section(hosts):
    """The broker restarts while the agent is cut off: what the agent wrote into the old
    connection meanwhile (the sync's output and end) is refused when the link heals, and only
    the spool has it."""
    # About 2 s of sync, over well before anything could close the connection on its own.
    hosts.workspace("ws1", "big:20", env={"P4SIM_DELAY_PER_FILE": "0.1"})
    hosts.start()
    job_id = hosts.submit("ws1")
    wait_for(lambda: any(a.startswith("sync ") for a in hosts.executions("ws1")), 60, "the sync to start")
    spool = Spool(hosts.tmp / "spool" / "agent-1")
    [sync] = spool.unfinished()  # one job, one command at a time
    hosts.net.cut("agent")
    hosts.restart("broker")
    wait_for(lambda: spool.has_result(sync), 30, "the sync to end in the cut")
    hosts.net.heal("agent")
    assert hosts.wait_state(job_id).state == "DONE"
    _assert_tail_is_the_spool(hosts, job_id)


def _output_lines(tail: str, job_id: str) -> Counter[str]:
    """Lines of command output in a tail (headers, stderr marks and the closing summary off)."""
    out: Counter[str] = Counter()
    for line in tail.splitlines():
        if line.startswith(job_id):
            break  # the summary and timeline printed at the end
        if not line.startswith("── "):
            out[line.removeprefix("stderr| ")] += 1
    return out


def _netem(net: netns.Network) -> None:
    net.netem("agent", "delay", "40ms", "10ms", "loss", "3%")


def _loss_and_rate(net: netns.Network) -> None:
    # 10% of packets dropped each way and 2 Mbit/s: TCP retransmits and the queue adds latency.
    net.lossy("agent", 0.10, rate_kbit=2000)


@pytest.mark.parametrize("impair", [_netem, _loss_and_rate], ids=["netem-latency-loss", "random-loss-and-rate"])
def test_an_impaired_agent_link_still_finishes_a_whole_job_byte_exact(hosts, impair):
    net = hosts.net
    hosts.workspace("ws1", "big:40")
    try:
        impair(net)
    except netns.ImpairmentUnavailable as exc:
        pytest.skip(f"tc netem is not in this kernel ({exc}); random-loss-and-rate covers an impaired link here")
    hosts.start()
    job_id = hosts.submit("ws1")
    _assert_done_once_each(hosts, "ws1", job_id)
    assert net.dropped("agent") > 0, "the impairment never dropped a packet: the test proved nothing"
