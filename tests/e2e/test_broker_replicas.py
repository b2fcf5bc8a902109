"""Two brokers: every publisher sends each event to both, every subscriber reads both and drops
the copies. One broker SIGKILLed for good in the middle of a job's heavy output: the job ends
DONE, the live and the later tail are byte-exact, and not one byte came from the agent's spool
(the surviving broker had it all). With both up, `p4bus events` prints each event once and
none is missing (docs/reliability.md, "a broker dies for good")."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
import zmq

from broker.client import history_then_live
from common import protocol as P
from common import topics
from p4bus.harness.tail_output import sections, streams
from tests.conftest import REPO, wait_for
from tests.e2e.test_cli_jobs import _spool

pytestmark = pytest.mark.timeout(240)

FILES = 4000  # lines of `p4 sync` and `p4 integrate` output each
CHUNK = 2048  # small chunks: a few hundred events per command, so the kill lands among them
SPOOL_NOTE = "read from the agents' spools"


def _cli(jobs, *args: str) -> list[str]:
    return [sys.executable, "-m", "p4bus", "--config", str(jobs.stack.config_file()), *args]


def _two_brokers(jobs) -> None:
    jobs.stack.tree["agent"]["chunk_bytes"] = CHUNK
    for name, extra in jobs.stack.replicate_brokers(2).items():
        jobs.procs[name] = jobs.stack.start("broker", name=name, extra=extra)
    jobs.start("master", "orchestrator")


def _check_tail(jobs, job_id: str, out: str) -> None:
    with jobs.orch() as oc:
        view = oc.job(job_id)
    got = sections(out)
    assert len(got) == len(view.timeline), [h for h, _ in got]
    for run, (_header, body) in zip(view.timeline, got, strict=True):
        assert streams(body) == (_spool(jobs, run, "stdout"), _spool(jobs, run, "stderr")), run.stage


def _journalled(path: Path, prefix: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM events WHERE topic LIKE ?", (prefix + "%",)).fetchone()[0])
    finally:
        db.close()


def test_one_of_two_brokers_killed_mid_output_loses_nothing_and_fetches_nothing_from_the_spool(jobs):
    info = jobs.workspace("ws1", f"big:{FILES}")
    _two_brokers(jobs)
    cfg = jobs.stack.config()
    second = cfg.bus_brokers()[1]
    # The kill comes from the surviving broker's stream: at the job's first output chunk.
    killed = threading.Event()
    ctx = zmq.Context()

    def kill_at_first_chunk() -> None:
        stream = history_then_live(ctx, second.xpub, second.replay, jobs.stack.security(), [topics.LOG + "."])
        try:
            for got in stream:
                if isinstance(got.event, P.LogChunk):
                    jobs.stack.kill("broker")
                    killed.set()
                    return
        finally:
            stream.close()

    killer = threading.Thread(target=kill_at_first_chunk, daemon=True)
    killer.start()
    follow = subprocess.run(
        _cli(
            jobs,
            "submit",
            "--workspace",
            "ws1",
            "--source",
            info["source"],
            "--target",
            info["target"],
            "--follow",
            "--log",
        ),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    killer.join(10)
    ctx.term()
    assert killed.is_set(), "the first broker was never killed"
    assert follow.returncode == 0, follow.stderr
    job_id = follow.stdout.splitlines()[0]
    assert jobs.wait_state(job_id).state == "DONE"
    # The kill fell in the middle of the output: the dead broker's journal holds less of it.
    prefix = f"{topics.LOG}.{job_id}."
    dead, alive = (
        _journalled(cfg.state_path / "journal.db", prefix),
        _journalled(cfg.state_path / "journal-2.db", prefix),
    )
    assert 0 <= dead < alive, (dead, alive)
    # Live (across the kill) and afterwards (history of the survivor): every byte once, none of
    # them from the spool. (A hole one broker's stream shows is held for the survivor's copy:
    # p4bus/stream.py, HoldBack.)
    _check_tail(jobs, job_id, follow.stdout)
    assert SPOOL_NOTE not in follow.stderr, follow.stderr
    tail = subprocess.run(_cli(jobs, "tail", job_id), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert tail.returncode == 0, tail.stderr
    _check_tail(jobs, job_id, tail.stdout)
    assert SPOOL_NOTE not in tail.stderr, tail.stderr


def test_with_two_brokers_up_each_subscriber_sees_each_event_once(jobs):
    jobs.workspace("ws1", "clean")
    _two_brokers(jobs)
    cfg = jobs.stack.config()
    events = subprocess.Popen(_cli(jobs, "events"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        job_id = jobs.submit("ws1")
        assert jobs.wait_state(job_id).state == "DONE"
        lines: list[dict] = []

        def printed_the_end() -> bool:
            lines.append(json.loads(events.stdout.readline()))  # type: ignore[union-attr]
            ev = lines[-1]
            return ev["t"] == "job" and ev["job_id"] == job_id and ev["state"] == "DONE"

        wait_for(printed_the_end, 60, "`p4bus events` to print the job's end", interval=0)
    finally:
        events.send_signal(signal.SIGTERM)
        _rest, err = events.communicate(timeout=30)
    assert events.returncode == 0, err
    # Once each: no (publisher, source, epoch, kind, seq) twice ...
    keys = [(e["publisher"], e["source"], e["epoch"], topics.kind(e["topic"]), e["seq"]) for e in lines]
    assert len(keys) == len(set(keys))
    # ... and none missing: each run's seqs are consecutive from the first printed.
    runs: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for *run, seq in keys:
        runs[(run[0], run[1], run[2], run[3])].append(seq)
    for run, seqs in runs.items():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), run
    # Both brokers journalled each of the job's events, and the orchestrator dropped the copies.
    for journal in (cfg.state_path / "journal.db", cfg.state_path / "journal-2.db"):
        for prefix in (f"{topics.LOG}.{job_id}.", f"{topics.CMD}.{job_id}.", topics.job(job_id)):
            assert _journalled(journal, prefix) == sum(e["topic"].startswith(prefix) for e in lines), (journal, prefix)
    with jobs.orch() as oc:
        assert oc.stats()["duplicate_events"] > 0
