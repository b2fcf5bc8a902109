"""Every service's metrics and health over HTTP, scraped while real jobs run (issue 13 item 5):
the values move as they must, and a frozen service's health turns 503 and back."""

from __future__ import annotations

import http.client
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import STALE_S, parse_url
from common.zmqutil import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SERVICES = ("broker", "master", "orchestrator", "web", "notify", "agent-1", "agent-2")


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + "metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every label set that includes ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def health(url: str, timeout: float = 10) -> tuple[int, Mapping[str, object]]:
    try:
        with urllib.request.urlopen(url + "health", timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_every_service_serves_metrics_that_move_with_jobs_and_a_frozen_one_turns_unhealthy(jobs):
    jobs.workspace("ws1", "clean", review_before_submit=True)
    # The notifier's receiver refuses connections: its deliveries fail (and are counted).
    jobs.stack.tree["notify"] = {
        "receivers": {"hook": {"kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/"}},
        "rules": [{"receivers": ["hook"]}],
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
    }
    jobs.start("broker", "master", "orchestrator", "web", "notify", agents={"agent-1": ["ws1"], "agent-2": []})
    urls = {name: jobs.stack.metrics_url(name) for name in SERVICES}
    assert len(set(urls.values())) == len(SERVICES) and None not in urls.values()
    for name, url in urls.items():
        wait_for(lambda u=url: health(u)[0] == 200, 30, f"{name}'s health to say ok")
        assert health(url)[1]["service"] == name.split("-")[0]
    before = {name: scrape(url) for name, url in urls.items()}
    assert value(before["master"], "p4bus_master_agents_alive") == 2
    assert value(before["orchestrator"], "p4bus_orchestrator_active") == 1

    def orch() -> Samples:
        return scrape(urls["orchestrator"])

    # The first job waits for approval holding the workspace; the second queues behind it.
    first = jobs.submit("ws1")
    assert jobs.wait_state(first, ("WAITING_APPROVAL", "FAILED")).state == "WAITING_APPROVAL"
    second = jobs.submit("ws1")
    wait_for(
        lambda: (
            (s := orch())
            and value(s, "p4bus_orchestrator_jobs", state="QUEUED") == 1
            and value(s, "p4bus_orchestrator_jobs", state="WAITING_APPROVAL") == 1
        ),
        20,
        "the jobs gauge to show one job QUEUED, one WAITING_APPROVAL",
    )
    with jobs.orch() as oc:
        oc.approve(first)
        assert jobs.wait_state(first).state == "DONE"
        view = jobs.wait_state(second, ("WAITING_APPROVAL", "NOTHING_TO_DO", "DONE", "FAILED"))
        if view.state == "WAITING_APPROVAL":
            oc.approve(second)
    assert jobs.wait_state(second).state in ("DONE", "NOTHING_TO_DO")
    after = wait_for(
        lambda: (
            (s := orch())
            and value(s, "p4bus_orchestrator_jobs", state="QUEUED") == 0
            and value(s, "p4bus_orchestrator_jobs", state="WAITING_APPROVAL") == 0
            and value(s, "p4bus_orchestrator_jobs", state="DONE") >= 1
            and s
        ),
        20,
        "the jobs gauge to show both jobs finished",
    )
    o0 = before["orchestrator"]
    for state in ("QUEUED", "RUNNING", "WAITING_APPROVAL", "DONE"):
        assert value(after, "p4bus_orchestrator_job_transitions_total", state=state) > value(
            o0, "p4bus_orchestrator_job_transitions_total", state=state
        ), state
    commands = total(after, "p4bus_orchestrator_command_duration_seconds_count")
    assert commands >= 10  # sync, change, integrate, resolves, shelve, submit ...
    assert total(after, "p4bus_orchestrator_command_duration_seconds_count", outcome="ok") >= 10
    assert total(after, "p4bus_orchestrator_dispatch_round_trip_seconds_count") >= commands
    assert total(after, "p4bus_orchestrator_stage_duration_seconds_count", stage="SYNC") >= 1
    assert value(after, "p4bus_orchestrator_store_commit_seconds_count") > value(
        o0, "p4bus_orchestrator_store_commit_seconds_count"
    )
    assert value(after, "p4bus_orchestrator_events_total") > value(o0, "p4bus_orchestrator_events_total")
    assert value(after, "p4bus_orchestrator_dispatches_total") >= commands

    broker, b0 = scrape(urls["broker"]), before["broker"]
    for name in ("p4bus_broker_events_in_total", "p4bus_broker_events_out_total", "p4bus_broker_journalled_total"):
        assert value(broker, name) > value(b0, name), name
    assert value(broker, "p4bus_broker_journal_bytes") > 0
    assert value(broker, "p4bus_broker_journal_dropped_total") == 0

    agent = scrape(urls["agent-1"])  # the agent of ws1 ran every command
    assert total(agent, "p4bus_agent_command_duration_seconds_count") >= commands
    assert value(agent, "p4bus_agent_spool_free_bytes") > 0
    assert value(agent, "p4bus_agent_masters_connected") == 1
    master = scrape(urls["master"])
    assert value(master, "p4bus_master_dispatched_total") >= commands
    assert value(master, "p4bus_master_agent_spool_free_bytes", agent="agent-1") > 0
    wait_for(
        lambda: total(scrape(urls["notify"]), "p4bus_notify_failed_total", receiver="hook") >= 1,
        20,
        "the notifier to count a failed delivery",
    )

    # Freeze an agent: the master loses it; once thawed its health says it stalled, then ok.
    agent2 = jobs.procs["agent-2"]
    host, port = parse_url(urls["agent-2"], "agent-2 metrics")
    frozen_at = time.monotonic()
    agent2.signal_group(signal.SIGSTOP)
    try:
        wait_for(
            lambda: (
                value(scrape(urls["master"]), "p4bus_master_agents_alive") == 1
                and time.monotonic() - frozen_at > STALE_S + 0.5
            ),
            30,
            "the master to lose the frozen agent",
        )
        # Asked while it is frozen (the kernel takes the connection and the request), answered
        # as soon as it runs again.
        asked = http.client.HTTPConnection(host, port, timeout=60)
        asked.request("GET", "/health")
    finally:
        agent2.signal_group(signal.SIGCONT)
    reply = asked.getresponse()
    body = json.load(reply)
    asked.close()
    # Answered before the loop's next tick (the loop is still stalled) or after it (it was just).
    assert reply.status == 503 and body["status"] == "stalled", body
    assert max(body.get("stalled_for_s", 0), body["last_tick_s_ago"]) > STALE_S, body
    lost = value(scrape(urls["master"]), "p4bus_master_agents_lost_total")
    assert lost == value(before["master"], "p4bus_master_agents_lost_total") + 1
    wait_for(lambda: value(scrape(urls["master"]), "p4bus_master_agents_alive") == 2, 30, "the agent back")
    wait_for(lambda: health(urls["agent-2"])[0] == 200, 30, "the thawed agent's health to say ok again")
    jobs.stack.check_alive()
