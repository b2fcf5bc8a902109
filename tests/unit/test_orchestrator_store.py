import sqlite3

import msgspec
import pytest

from common import protocol as P
from orchestrator.pipeline import CommandSpec, JobParams, JobState, Workspace
from orchestrator.store import MIGRATIONS, CmdKind, CmdState, Store

# Generous: half the tests talk to a PostgreSQL server, which a loaded machine slows down.
pytestmark = pytest.mark.timeout(30)

PARAMS = JobParams(
    workspace=Workspace(name="ws", p4port="sim:1666", p4user="u", p4client="c", root="/r"), source="//depot/dev/..."
)


def _add(store: Store, n: int, workspace: str = "ws") -> str:
    params = msgspec.structs.replace(PARAMS, workspace=msgspec.structs.replace(PARAMS.workspace, name=workspace))
    store.add_job(f"J{n}", "toy", params, agent=None, pool=None, first_stage="SYNC", now=float(n))
    return f"J{n}"


def test_schema_migrates_once_and_refuses_a_newer_store(store_at):
    Store(store_at()).close()
    store = Store(store_at())  # reopening applies nothing twice
    assert store.schema_version() == len(MIGRATIONS)
    with store.tx():
        store.db.set_schema_version(len(MIGRATIONS) + 1)
    store.close()
    with pytest.raises(RuntimeError, match="newer than this p4bus"):
        Store(store_at())


def test_a_store_of_the_first_schema_keeps_its_jobs_and_commands(tmp_path):
    path = tmp_path / "jobs.db"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
    con.execute(
        "INSERT INTO jobs(id, n, pipeline, workspace, agent, params, state, stage, vars, created_at, updated_at) "
        "VALUES ('J1', 1, 'toy', 'ws', 'a1', ?, 'RUNNING', 'SYNC', '{}', 1, 1)",
        (msgspec.json.encode(PARAMS),),
    )
    con.execute(
        "INSERT INTO commands(cmd_id, job_id, kind, stage, step, attempt, spec, state, agent, created_at) "
        "VALUES ('c1', 'J1', 'stage', 'SYNC', 0, 1, '{\"argv\": [\"p4\"]}', 'RUNNING', 'a1', 1)"
    )
    con.commit()
    con.close()
    store = Store(path)
    job, cmd = store.job("J1"), store.command("c1")
    assert job is not None and cmd is not None
    # A pin from before is taken as asked for: it is never moved by the orchestrator.
    assert (job.state, job.agent, job.agent_pinned) == (JobState.RUNNING, "a1", False)
    assert (cmd.state, cmd.unknown_since, cmd.refused_since) == (CmdState.RUNNING, 0, 0)
    assert store.in_flight_on("a1") == [cmd]


def test_a_failed_step_leaves_nothing_behind(store_at):
    store = Store(store_at())
    with pytest.raises(RuntimeError, match="mid-step"), store.tx():
        _add(store, 1)
        raise RuntimeError("mid-step failure")
    assert store.job("J1") is None


def test_events_are_handled_once_and_counters_count(store_at):
    store = Store(store_at())
    with store.tx():
        assert store.record_event("agent-1", "e1", "cmd", 7, now=1.0)
        assert not store.record_event("agent-1", "e1", "cmd", 7, now=2.0)
        assert store.record_event("agent-1", "e2", "cmd", 7, now=3.0)  # a new epoch is a new event
    store.prune_events(older_than=2.0)
    with store.tx():
        assert store.record_event("agent-1", "e1", "cmd", 7, now=4.0)  # forgotten after pruning
        assert not store.record_event("agent-1", "e2", "cmd", 7, now=4.0)
    assert [store.next_counter("day") for _ in range(3)] == [1, 2, 3]


def test_queue_order_busy_workspace_and_newest_jobs(store_at):
    store = Store(store_at())
    with store.tx():
        for n in range(1, 6):
            _add(store, n)
        _add(store, 6, workspace="other")
    assert [j.id for j in store.queued("ws")] == ["J1", "J2", "J3", "J4", "J5"]
    assert [j.id for j in store.list_jobs(include_finished=True, limit=2)] == ["J5", "J6"]
    assert not store.workspace_busy("ws")
    with store.tx():
        store.apply_transition("J1", JobState.WAITING_RESOLVE, "RESOLVE", 0, 1, {"change": 7}, "", "", now=10.0)
        store.cancel_job("J5", "cancelled by request", now=11.0)
    assert store.workspace_busy("ws") and store.active_job("ws").id == "J1"
    assert not store.workspace_busy("other")
    assert [j.id for j in store.list_jobs(include_finished=False, limit=10)] == ["J1", "J2", "J3", "J4", "J6"]
    assert [j.id for j in store.waiting_resolve_since(10.5)] == ["J1"]
    assert store.waiting_resolve_since(10.0) == []
    # Read from the index: a deep queue is never decoded whole for a position or a sweep.
    assert store.queued_workspaces() == ["other", "ws"]
    assert [store.queue_position(j) for j in store.queued("ws")] == [1, 2, 3]
    assert [j.id for j in store.queued("ws", limit=1)] == ["J2"]


def test_rows_come_back_typed_and_a_secret_stdin_is_never_stored(store_at, tmp_path):
    store = Store(store_at())
    secret = CommandSpec(argv=["p4", "login"], stdin=b"hunter2\n", stdin_secret=True)
    with store.tx():
        _add(store, 1)
        cmd_id = store.add_command("J1", CmdKind.STAGE, "LOGIN", 0, 1, secret, not_before=5.0, now=1.0)
    job, cmd = store.job("J1"), store.command(cmd_id)
    assert job.state is JobState.QUEUED and job.params == PARAMS and job.vars == {}
    assert cmd.state is CmdState.PENDING and cmd.kind is CmdKind.STAGE and cmd.secret
    assert cmd.spec == CommandSpec(argv=["p4", "login"], stdin_secret=True)
    if store.pg is None:
        stored = b"".join(tmp_path.joinpath(name).read_bytes() for name in ("jobs.db", "jobs.db-wal"))
    else:  # every column of every row, as PostgreSQL writes it out (bytea in hex)
        stored = "".join(r[0] for r in store.db.execute("SELECT CAST(commands AS TEXT) FROM commands")).encode()
    assert b"hunter2" not in stored and b"hunter2".hex().encode() not in stored


def test_a_command_moves_through_its_states(store_at):
    store = Store(store_at())
    with store.tx():
        _add(store, 1)
        cmd_id = store.add_command("J1", CmdKind.STAGE, "SYNC", 0, 1, CommandSpec(argv=["p4", "sync"]), 0.0, 1.0)
        store.defer_dispatch(cmd_id, "no agent serves workspace ws", not_before=3.0)
    assert store.command(cmd_id).waiting_for == "no agent serves workspace ws"
    assert store.agents_in_flight() == set()
    with store.tx():
        store.record_dispatch(cmd_id, "a1", CmdState.DISPATCHED, now=4.0)
        store.mark_started(cmd_id, "a1", started_at=4.5, now=5.0)
    cmd = store.command(cmd_id)
    assert (cmd.state, cmd.agent, cmd.waiting_for, cmd.last_contact) == (CmdState.RUNNING, "a1", "", 5.0)
    assert store.agents_in_flight() == {"a1"} and store.agents_in_flight(quiet_since=5.0) == set()
    assert [c.cmd_id for c in store.in_flight_on("a1")] == [cmd_id]
    status = P.CmdStatus(cmd_id=cmd_id, agent="a1", state="done", exit_code=0, stdout=b"big output")
    with store.tx():
        store.finish_command(
            cmd_id, CmdState.DONE, status, started_at=4.5, ended_at=9.0, agent="a1", outcome=("NEXT", "synced", "")
        )
    cmd = store.command(cmd_id)
    assert (cmd.state, cmd.exit_code, cmd.ended_at, cmd.outcome, cmd.key_line) == (
        CmdState.DONE,
        0,
        9.0,
        "NEXT",
        "synced",
    )
    assert cmd.status == msgspec.structs.replace(status, stdout=b"")
    assert store.open_commands() == [] and store.in_flight_on("a1") == []


def test_commands_keep_the_order_they_were_written_in(store_at):
    store = Store(store_at())
    with store.tx():
        _add(store, 1)
        written = [
            store.add_command("J1", CmdKind.STAGE, "SYNC", i, 1, CommandSpec(argv=["p4", str(i)]), 0.0, now=5.0)
            for i in range(8)
        ]
    assert [c.cmd_id for c in store.job_commands("J1")] == written
    assert [c.cmd_id for c in store.open_commands()] == written


def test_a_job_is_found_by_the_pending_change_it_holds(store_at):
    store = Store(store_at())
    with store.tx():
        for n in (1, 2, 3):
            _add(store, n)
        store.set_vars("J1", {"change": 41}, now=2.0)
        store.set_vars("J2", {"change": 42, "note": "x"}, now=2.0)
        store.set_vars("J3", {"change": "42"}, now=2.0)  # a string is no change number
    assert store.job_with_change("ws", 42, other_than="J9").id == "J2"
    assert store.job_with_change("ws", 41, other_than="J9").id == "J1"
    assert store.job_with_change("ws", 41, other_than="J1") is None
    assert store.job_with_change("other", 41, other_than="J9") is None


def test_a_store_of_the_third_schema_numbers_its_commands_in_the_order_they_were_made(tmp_path):
    path = tmp_path / "jobs.db"
    con = sqlite3.connect(path)
    con.executescript("".join(m + ";" for m in MIGRATIONS[:3]) + "PRAGMA user_version=3;")
    con.execute(
        "INSERT INTO jobs(id, n, pipeline, workspace, params, state, stage, vars, created_at, updated_at) "
        "VALUES ('J1', 1, 'toy', 'ws', ?, 'RUNNING', 'SYNC', '{}', 1, 1)",
        (msgspec.json.encode(PARAMS),),
    )
    for cmd_id, created in (("c3", 1.0), ("c1", 2.0), ("c2", 2.0)):
        con.execute(
            "INSERT INTO commands(cmd_id, job_id, kind, stage, step, attempt, spec, state, created_at) "
            "VALUES (?, 'J1', 'stage', 'SYNC', 0, 1, '{\"argv\": [\"p4\"]}', 'DONE', ?)",
            (cmd_id, created),
        )
    con.commit()
    con.close()
    store = Store(path)
    with store.tx():
        new = store.add_command("J1", CmdKind.STAGE, "SYNC", 1, 1, CommandSpec(argv=["p4"]), 0.0, now=2.0)
    assert [c.cmd_id for c in store.job_commands("J1")] == ["c3", "c1", "c2", new]
    assert [r[0] for r in store.db.execute("SELECT seq FROM commands ORDER BY seq")] == [1, 2, 3, 4]
