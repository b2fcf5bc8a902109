import sqlite3

import pytest

from orchestrator.store import MIGRATIONS, JobRow, Store

pytestmark = pytest.mark.timeout(10)


def _job(n: int, state: str = "QUEUED", workspace: str = "ws") -> JobRow:
    return JobRow(
        id=f"J{n}",
        n=n,
        pipeline="p4-integrate",
        workspace=workspace,
        agent=None,
        pool=None,
        params=b"{}",
        state=state,
        stage="SYNC",
        step=0,
        attempt=1,
        vars=b"{}",
        reason="",
        key_line="",
        retry_from=None,
        created_at=float(n),
        updated_at=float(n),
    )


def test_schema_migrates_once_and_refuses_a_newer_store(tmp_path):
    path = tmp_path / "jobs.db"
    Store(path).close()
    store = Store(path)  # reopening applies nothing twice
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    con.close()
    with pytest.raises(RuntimeError, match="newer than this p4bus"):
        Store(path)


def test_a_failed_step_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "jobs.db")
    with pytest.raises(RuntimeError, match="mid-step"), store.tx():
        store.insert_job(_job(1))
        raise RuntimeError("mid-step failure")
    assert store.job("J1") is None


def test_events_are_handled_once_and_counters_count(tmp_path):
    store = Store(tmp_path / "jobs.db")
    with store.tx():
        assert store.record_event("agent-1", "e1", "cmd", 7)
        assert not store.record_event("agent-1", "e1", "cmd", 7)
        assert store.record_event("agent-1", "e2", "cmd", 7)  # a new epoch is a new event
    assert [store.next_counter("day") for _ in range(3)] == [1, 2, 3]


def test_queue_order_busy_workspace_and_newest_jobs(tmp_path):
    store = Store(tmp_path / "jobs.db")
    with store.tx():
        for n in range(1, 6):
            store.insert_job(_job(n))
    assert [j.id for j in store.queued("ws")] == ["J1", "J2", "J3", "J4", "J5"]
    assert [j.id for j in store.jobs(limit=2, newest=True)] == ["J4", "J5"]
    assert not store.workspace_busy("ws")
    with store.tx():
        store.update_job("J1", state="WAITING_RESOLVE")
    assert store.workspace_busy("ws") and store.active_job("ws").id == "J1"
