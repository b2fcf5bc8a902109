"""common/metrics.py and the services' instruments, without processes; and that the Grafana
dashboard and the alert rules in ops/ name only metrics the services export."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.metrics import AgentMetrics
from broker.metrics import BrokerMetrics
from common import metrics
from common import protocol as P
from common.config import ConfigError, env_overrides, from_tree
from master.metrics import MasterMetrics
from master.registry import AgentRecord
from orchestrator.metrics import OrchestratorMetrics
from p4bus.notify.metrics import NotifyMetrics
from p4bus.web.metrics import WebMetrics

OPS = Path(__file__).resolve().parents[2] / "ops"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_starting_ok_stalled_and_a_stall_that_ended_shows_for_hold_s() -> None:
    clock = Clock()
    h = metrics.Health("master", "m1", stale_s=3.0, hold_s=15.0, clock=clock)
    assert h.report()[0] == 503 and h.report()[1]["status"] == "starting"
    clock.now += 10  # a slow start-up is no stall
    h.tick()
    code, body = h.report()
    assert (code, body["status"], body["service"], body["id"]) == (200, "ok", "master", "m1")
    clock.now += 3.5  # the loop is stuck now
    assert h.report()[1]["status"] == "stalled" and h.report()[0] == 503
    h.tick()  # and back: the stall shows for hold_s more
    code, body = h.report()
    assert code == 503 and body["stalled_for_s"] == 3.5
    for _ in range(14):  # ticking every second again
        clock.now += 1.0
        h.tick()
    assert h.report()[0] == 503
    clock.now += 1.5  # 15.5 s after it ended
    h.tick()
    assert h.report()[0] == 200
    assert h.tick_age() == 0.0


def test_metrics_url_defaults_to_port_base_offsets_and_can_be_set_or_turned_off() -> None:
    cfg = from_tree({"port_base": 20000})
    assert cfg.metrics_url("broker") == "http://127.0.0.1:20007/"
    assert cfg.metrics_url("notify") == "http://127.0.0.1:20012/"
    cfg = from_tree({"master": {"metrics": "http://0.0.0.0:9999"}, "agent": {"metrics": "off"}})
    assert cfg.metrics_url("master") == "http://0.0.0.0:9999"
    assert cfg.metrics_url("agent") is None
    assert env_overrides({"P4BUS_ORCHESTRATOR_METRICS": "off"}) == {"orchestrator": {"metrics": "off"}}


@pytest.mark.parametrize(
    "url", ["tcp://127.0.0.1:9097", "http://127.0.0.1", "http://:80/", "http://h:99999/", "http://h:1/x"]
)
def test_a_bad_metrics_url_is_refused_with_the_setting_named(url: str) -> None:
    with pytest.raises(ConfigError, match=r"broker\.metrics .* is not http://HOST:PORT/"):
        metrics.parse_url(url, "broker.metrics")


def test_counters_collector_exposes_the_described_keys_as_counters_or_gauges() -> None:
    reg = CollectorRegistry()
    counts = {"a": 3, "b": 7, "undescribed": 1}
    reg.register(metrics.CountersCollector("p4bus_t_", lambda: counts, {"a": "A.", "b": "B."}, gauges=["b"]))
    assert reg.get_sample_value("p4bus_t_a_total") == 3
    assert reg.get_sample_value("p4bus_t_b") == 7
    assert reg.get_sample_value("p4bus_t_undescribed_total") is None
    counts["a"] = 4  # read at scrape time
    assert reg.get_sample_value("p4bus_t_a_total") == 4


def test_the_http_endpoint_serves_metrics_health_and_404() -> None:
    m = metrics.ProcessMetrics("broker", "b1")
    server = metrics.MetricsServer("127.0.0.1", 0, m)
    try:
        with urllib.request.urlopen(server.url + "metrics", timeout=5) as r:
            assert "p4bus_loop_tick_age_seconds -1.0" in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "health", timeout=5)
        assert err.value.code == 503 and json.load(err.value)["status"] == "starting"
        m.health.tick()
        with urllib.request.urlopen(server.url + "health", timeout=5) as r:
            assert json.load(r) | {"last_tick_s_ago": 0, "uptime_s": 0} == {
                "service": "broker",
                "id": "b1",
                "status": "ok",
                "last_tick_s_ago": 0,
                "uptime_s": 0,
            }
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "nothing", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


def test_a_port_in_use_leaves_the_service_without_metrics_not_down() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = from_tree({"agent": {"metrics": f"http://127.0.0.1:{port}"}})
        assert metrics.serve(cfg, "agent", metrics.ProcessMetrics("agent", "a")) is None
    assert (
        metrics.serve(from_tree({"agent": {"metrics": "off"}}), "agent", metrics.ProcessMetrics("agent", "a")) is None
    )
    with pytest.raises(ConfigError, match=r"^agent\.metrics 'tcp://h:1' is not http://HOST:PORT/"):
        metrics.serve(from_tree({"agent": {"metrics": "tcp://h:1"}}), "agent", metrics.ProcessMetrics("agent", "a"))


def test_master_counts_late_heartbeats_only() -> None:
    rec = AgentRecord(info=P.AgentInfo(agent_id="a1", host="h"), identity=b"x", heartbeat_s=1.0, last_seen=10.0)
    m = MasterMetrics("m", dict, {"a1": rec})
    m.heard(rec, P.Heartbeat(), 11.4)
    m.heard(rec, P.Bye(agent_id="a1"), 20.0)
    assert m.registry.get_sample_value("p4bus_master_heartbeats_late_total") == 0
    m.heard(rec, P.Heartbeat(), 11.6)
    assert m.registry.get_sample_value("p4bus_master_heartbeats_late_total") == 1
    assert m.registry.get_sample_value("p4bus_master_agents_alive") == 1


def view(job_id: str, state: str, stage: str) -> P.JobView:
    return P.JobView(job_id=job_id, state=state, stage=stage, pipeline="p", workspace="w", created_at=0, updated_at=0)


def test_orchestrator_stage_durations_commands_once_and_holes() -> None:
    m = OrchestratorMetrics("o", dict)
    get = m.registry.get_sample_value
    m.job_changed(view("j1", "QUEUED", "SYNC"), now=0.0)
    m.job_changed(view("j1", "RUNNING", "SYNC"), now=1.0)
    m.job_changed(view("j1", "RUNNING", "RESOLVE"), now=4.0)
    m.job_changed(view("j1", "DONE", "RESOLVE"), now=6.0)
    assert get("p4bus_orchestrator_stage_duration_seconds_sum", {"stage": "SYNC"}) == 4.0
    assert get("p4bus_orchestrator_stage_duration_seconds_sum", {"stage": "RESOLVE"}) == 2.0
    assert get("p4bus_orchestrator_job_transitions_total", {"state": "RUNNING"}) == 2
    status = P.CmdStatus(cmd_id="c1", state="done", exit_code=0, duration=0.5)
    m.command_done(status)
    m.command_done(status)  # again, by reconciliation: counted once
    assert get("p4bus_orchestrator_command_duration_seconds_count", {"outcome": "ok"}) == 1
    m.hole("a1")
    assert get("p4bus_orchestrator_seq_holes_open") == 1
    m.reconciled("a2")
    m.reconciled("a1")
    m.reconciled("a1")
    assert (get("p4bus_orchestrator_seq_holes_total"), get("p4bus_orchestrator_seq_holes_repaired_total")) == (1, 1)
    assert get("p4bus_orchestrator_seq_holes_open") == 0


# ---------------------------------------------------------------- ops/: dashboard and rules


def exported() -> set[str]:
    """Every sample name the services can export (histograms: _bucket, _sum, _count)."""
    registries = [
        BrokerMetrics("b", dict, 1).registry,
        MasterMetrics("m", dict, {}).registry,
        AgentMetrics("a", 1, [], lambda: 0, lambda: 0, {}).registry,
        OrchestratorMetrics("o", dict).registry,
        WebMetrics("w").registry,
        NotifyMetrics("n", {}).registry,
    ]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {f.name + s for reg in registries for f in reg.collect() for s in suffixes[f.type]}


def named(expr: str) -> set[str]:
    return set(re.findall(r"\bp4bus_[a-z0-9_]+", expr))


def test_the_grafana_dashboard_parses_and_names_only_exported_metrics() -> None:
    dash = json.loads((OPS / "grafana" / "p4bus.json").read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    used = set().union(*map(named, exprs))
    assert len(used) >= 25
    assert used - exported() == set()


def test_the_alert_rules_parse_and_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    wanted = {
        "P4busOrchestratorDown",
        "P4busNoActiveOrchestrator",
        "P4busAgentsLost",
        "P4busHeartbeatsLate",
        "P4busSeqHolesUnrepaired",
        "P4busJournalNearLimit",
        "P4busDispatchLatencyHigh",
        "P4busJobsStuckQueued",
    }
    assert wanted <= {r["alert"] for r in rules}
    used = set().union(*(named(r["expr"]) for r in rules))
    assert used - exported() == set()
    assert all(r["annotations"]["summary"] for r in rules)
    scrape = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    assert {j["job_name"] for j in scrape["scrape_configs"]} >= {"p4bus-orchestrator", "p4bus-master", "p4bus-broker"}
