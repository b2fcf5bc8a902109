"""Small runs of the benches at scale (issue 13, item 6), so that their simulator keeps speaking
the protocol real masters and orchestrators speak: bench/fanin.py with 20 simulated agents, and
bench/orch_throughput.py replaying a recorded real job to 8 jobs on simulated agents. The
numbers at scale are in docs/performance.md; here only what must hold at any size."""

from __future__ import annotations

import pytest

from bench import fanin, orch_throughput

pytestmark = pytest.mark.timeout(180)

# MISSED_HEARTBEATS x heartbeat_s (3 s), with slack for a loaded 2-core machine.
LOST_WITHIN_S = 6.0


def test_fanin_reports_every_killed_simulated_agent_lost(tmp_path):
    # A window of several heartbeats each: /proc counts CPU in 10 ms ticks, which 20 agents
    # heartbeating for one second may not fill.
    row = fanin.run(tmp_path, 20, per_process=10, settle_s=0.5, window_s=4.0, kills=2)
    assert row.processes == 2
    assert len(row.single_lost) == 2 and max(row.single_lost) <= LOST_WITHIN_S, row
    # The SIGKILLed process held 10 agents: every one is reported, none early.
    assert row.process_agents == 10 and len(row.process_lost) == 10, row
    assert min(row.process_lost) >= 1.0 and max(row.process_lost) <= LOST_WITHIN_S, row
    assert row.master_cpu_pct > 0


def test_recorded_job_replayed_by_simulated_agents_ends_done(tmp_path):
    rec = orch_throughput.record(tmp_path / "rec")
    assert len(rec.answers) >= 4, rec.stages  # sync, integrate, resolve, ... each answered
    with orch_throughput.fleet(tmp_path / "run", rec.conf, 4, 2, rec.answers) as f:
        # measure() fails unless every job ends DONE (a missing answer would fail its stage).
        result = orch_throughput.measure(f, rec.facts, 8, "SQLite")
    assert result.jobs == 8 and result.transitions >= 8 * (len(rec.stages) + 1) - 4, result
    assert result.orch_cpu_s > 0
