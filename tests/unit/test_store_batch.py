"""Group commit in the store (orchestrator/db.py): a batch is one transaction, each step a
savepoint rolled back alone, and the effects held by a step go out only after the commit that
holds it -- on SQLite and on PostgreSQL."""

import msgspec
import pytest

from orchestrator.db import SqliteDb
from orchestrator.pipeline import CommandSpec, JobParams, JobState, Workspace
from orchestrator.store import MIGRATIONS, CmdKind, Store

pytestmark = pytest.mark.timeout(30)

PARAMS = JobParams(
    workspace=Workspace(name="ws", p4port="sim:1666", p4user="u", p4client="c", root="/r"), source="//depot/dev/..."
)


def _add(store: Store, n: int) -> None:
    with store.tx():
        store.add_job(f"J{n}", "toy", PARAMS, agent=None, pool=None, first_stage="SYNC", now=float(n))


@pytest.fixture
def store(store_at):
    s = Store(store_at())
    commits: list[float] = []
    s.on_commit = commits.append
    s.commits = commits  # type: ignore[attr-defined]
    yield s
    s.close()


@pytest.fixture
def committed(store, store_at):
    """The job ids as another connection sees them: what is committed (opened before any batch
    holds the write lock; reading takes none)."""
    other = Store(store_at())
    yield lambda: sorted(j.id for j in other.list_jobs(include_finished=True, limit=100))
    other.close()


def test_a_batch_is_one_commit_and_its_effects_go_out_after_it_in_order(store, committed):
    went: list[str] = []
    with store.batch():
        for n in (1, 2, 3):
            with store.step():
                _add(store, n)
                store.after_commit(lambda n=n: went.append(f"J{n}"))
        assert went == [] and store.held == 3
        assert committed() == []  # nothing committed yet, so nothing may have been sent
    assert len(store.commits) == 1
    assert went == ["J1", "J2", "J3"] and store.held == 0
    assert committed() == ["J1", "J2", "J3"]


def test_a_failing_step_is_rolled_back_alone_with_its_effects(store, committed):
    went: list[str] = []
    with store.batch():
        with store.step():
            _add(store, 1)
            store.after_commit(lambda: went.append("J1"))
        with pytest.raises(ZeroDivisionError), store.step():
            _add(store, 2)
            store.after_commit(lambda: went.append("J2"))
            _ = 1 / 0
        with store.step():
            _add(store, 3)
            store.after_commit(lambda: went.append("J3"))
    assert went == ["J1", "J3"]
    assert committed() == ["J1", "J3"]


def test_a_failing_inner_step_is_undone_and_the_step_around_it_goes_on(store, committed):
    """Nested tx() is a savepoint: a refused request that wrote something leaves nothing, also
    inside a batch (where it once would have joined the batch's transaction)."""
    with store.batch(), store.step():
        _add(store, 1)
        with pytest.raises(ValueError), store.tx():
            store.move_state("J1", JobState.QUEUED, JobState.RUNNING, 5.0)
            raise ValueError("refused after writing")
        assert store.job("J1").state == JobState.QUEUED
    assert committed() == ["J1"]


def test_a_batch_that_raises_commits_nothing_and_sends_nothing(store, committed):
    went: list[str] = []
    with pytest.raises(RuntimeError), store.batch():
        with store.step():
            _add(store, 1)
            store.after_commit(lambda: went.append("J1"))
        raise RuntimeError("the loop died mid-batch")
    assert went == [] and store.held == 0 and store.commits == []
    assert committed() == []
    with store.batch(), store.step():  # the store is usable again
        _add(store, 2)
    assert committed() == ["J2"]


def test_a_batch_that_writes_nothing_commits_nothing_and_effects_go_at_once(store):
    went: list[str] = []
    with store.batch():
        assert store.job("J9") is None
        store.after_commit(lambda: went.append("now"))
        assert went == ["now"]
    assert store.commits == []


def test_outside_a_batch_a_step_takes_no_transaction(store):
    """A standby answering reads must not take the write lock of a SQLite file the active one
    writes: a step outside a batch is nothing."""
    with store.step():
        assert not store.db.in_transaction
        assert store.job("J1") is None


def test_an_effect_that_fails_does_not_keep_the_others_back(store):
    went: list[str] = []

    def broken() -> None:
        raise OSError("socket gone")

    with store.batch(), store.step():
        _add(store, 1)
        store.after_commit(broken)
        store.after_commit(lambda: went.append("after"))
    assert went == ["after"]


def test_a_batch_begun_with_bookkeeping_is_flushed_once_it_holds_a_transition(tmp_path, monkeypatch):
    """SQLite fixes a transaction's synchronous setting when it begins: a batch whose first
    step was bookkeeping (durable=False) and that later held a durable step is made durable by
    one more commit at synchronous=FULL (it syncs the WAL, and every frame before it)."""
    store = Store(tmp_path / "jobs.db")
    db = store.db
    assert isinstance(db, SqliteDb)
    flushes: list[int] = []
    flush = db._flush_wal
    monkeypatch.setattr(db, "_flush_wal", lambda: (flushes.append(1), flush())[1])
    _add(store, 1)
    with store.batch(), store.step():  # bookkeeping only: no flush
        store.touch("nothing", 1.0)
    assert flushes == []
    with store.batch():
        with store.step(), store.tx(durable=False):
            store.touch("nothing", 2.0)
        with store.step(), store.tx():
            store.move_state("J1", JobState.QUEUED, JobState.RUNNING, 3.0)
    assert flushes == [1]
    assert db.conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again after the batch
    assert store.schema_version() == len(MIGRATIONS)  # the flush rewrote it unchanged
    with store.batch(), store.tx():  # durable from its first step: no extra commit
        store.move_state("J1", JobState.RUNNING, JobState.QUEUED, 4.0)
    assert flushes == [1]
    store.close()


def test_rows_decode_their_spec_and_status_only_when_asked(store):
    _add(store, 1)
    with store.tx():
        cmd_id = store.add_command("J1", CmdKind.STAGE, "SYNC", 0, 1, CommandSpec(argv=["p4", "sync"]), 0.0, 1.0)
    cmd = store.command(cmd_id)
    assert msgspec.json.decode(cmd.spec_json)["argv"] == ["p4", "sync"]
    assert cmd.spec.argv == ["p4", "sync"] and cmd.status is None


def test_a_shared_savepoint_undoes_exactly_the_inner_step(store, committed):
    """Savepoints are made at a step's first write and shared by the steps open with nothing
    written between their starts: rolling the inner one back undoes its writes only."""
    with store.batch():
        with store.step():  # nothing written before the inner step: they share one savepoint
            with pytest.raises(ValueError), store.tx():
                _add(store, 1)
                raise ValueError("refused")
            _add(store, 2)  # the step goes on after its inner step was undone
        with pytest.raises(ValueError), store.step():
            with store.tx():
                _add(store, 3)  # committed by the inner step, undone with the step around it
            raise ValueError("the step fails after its inner step")
    assert committed() == ["J2"]


def test_a_step_that_only_reads_costs_no_statement_and_nested_steps_share_one_savepoint(tmp_path):
    store = Store(tmp_path / "jobs.db")
    _add(store, 1)
    said: list[str] = []
    store.db.conn.set_trace_callback(said.append)
    with store.batch():
        with store.step():
            store.job("J1")
        assert [s for s in said if not s.startswith("SELECT")] == []  # no BEGIN, no SAVEPOINT
        with store.step(), store.tx(), store.tx():
            store.move_state("J1", JobState.QUEUED, JobState.RUNNING, 2.0)
    assert sum(s.startswith("SAVEPOINT") for s in said) == 1
    assert sum(s.startswith("RELEASE") for s in said) == 1
    assert store.job("J1").state == JobState.RUNNING
    store.close()
