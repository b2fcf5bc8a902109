"""Whole jobs with the orchestrator's store on a real PostgreSQL server (over loopback TCP, its
password in a 0600 file): a job to DONE, a conflict resumed, the orchestrator SIGKILLed mid-job,
and the database connection cut under a running orchestrator."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from p4bus.harness.postgres import PgServer
from tests.conftest import wait_for
from tests.e2e.test_reliability import _assert_each_command_ran_once, _wait_for_p4_runs, orchestrator_sigkilled_mid_jobs

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def pg_jobs(jobs, pg_server: PgServer, pg_database, tmp_path):
    """The JobStack with its orchestrator's store in a fresh PostgreSQL database."""
    dbname = str(conninfo_to_dict(pg_database())["dbname"])
    password_file = tmp_path / "pg-password"
    password_file.write_text(pg_server.password + "\n")
    password_file.chmod(0o600)
    jobs.stack.tree["orchestrator"]["store"] = pg_server.tcp_dsn(dbname)
    jobs.stack.tree["orchestrator"]["store_password_file"] = str(password_file)
    jobs.pg_dsn = pg_server.dsn(dbname)  # the test's own look at the database (socket, no password)
    return jobs


def _rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_a_job_is_done_and_a_conflict_is_resumed_on_postgresql(pg_jobs, pg_server):
    jobs = pg_jobs
    jobs.workspace("ws1", "clean")
    jobs.workspace("ws2", "conflict")
    jobs.start()
    clean, conflict = jobs.submit("ws1"), jobs.submit("ws2")
    view = jobs.wait_state(conflict, ("WAITING_RESOLVE", "FAILED"))
    assert view.state == "WAITING_RESOLVE", view.reason
    assert "copy from" in jobs.p4("ws2", "resolve", "-at")
    with jobs.orch() as oc:
        oc.resume(conflict)
    views = [jobs.wait_state(j) for j in (clean, conflict)]
    assert [v.state for v in views] == ["DONE", "DONE"], [v.reason for v in views]
    _assert_each_command_ran_once(jobs, "ws1", views[0])
    person = jobs.executions("ws2").index("resolve -at")  # the test's own resolve, not the job's
    ran = jobs.executions("ws2")
    assert sorted(ran[:person] + ran[person + 1 :]) == sorted(
        " ".join(r.argv[1:]) for r in views[1].timeline if r.state == "DONE"
    )
    # The jobs are in PostgreSQL, and no SQLite store was made beside it.
    assert sorted(_rows(jobs.pg_dsn, "SELECT id, state FROM jobs")) == sorted((j, "DONE") for j in (clean, conflict))
    assert not list(jobs.tmp.rglob("jobs.db"))
    log = jobs.procs["orchestrator"].log_path.read_text()
    assert jobs.stack.tree["orchestrator"]["store"] in log  # where the store is, said at start
    assert pg_server.password not in log


def test_orchestrator_sigkilled_mid_job_on_postgresql_nothing_runs_twice(pg_jobs):
    orchestrator_sigkilled_mid_jobs(pg_jobs, workspaces=3, kills=3)


def test_a_lost_database_connection_stops_the_orchestrator_and_a_restart_finishes_the_job(pg_jobs, pg_server):
    jobs = pg_jobs
    jobs.workspace("ws1", "clean", env={"P4SIM_DELAY_PER_FILE": "0.03"})
    jobs.start()
    job_id = jobs.submit("ws1")
    _wait_for_p4_runs(jobs, 3)
    orch = jobs.procs["orchestrator"]
    cut = _rows(
        pg_server.dsn("postgres"),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'p4bus-orchestrator'",
    )
    assert cut == [(True,)]
    wait_for(lambda: orch.poll() is not None, 30, "the orchestrator to exit on its lost store")
    assert orch.returncode != 0
    log = orch.log_path.read_text()
    assert "store.connection_lost" in log and "lost the connection to the store" in log
    assert pg_server.password not in log
    jobs.kill_and_start("orchestrator")
    view = jobs.wait_state(job_id, timeout=120)
    assert view.state == "DONE", view.reason
    _assert_each_command_ran_once(jobs, "ws1", view)


def test_an_orchestrator_whose_database_is_not_there_exits_with_one_line(stack, tmp_path):
    password_file = tmp_path / "pg-password"
    password_file.write_text("s3cret-never-shown\n")
    password_file.chmod(0o600)
    store = "postgresql://p4bus@127.0.0.1:1/p4bus?connect_timeout=5"
    orch = stack.start(
        "orchestrator", extra={"orchestrator": {"store": store, "store_password_file": str(password_file)}}
    )
    wait_for(lambda: orch.poll() is not None, 60, "the orchestrator to give up on its store")
    assert orch.returncode != 0
    lines = orch.log_path.read_text().strip().splitlines()
    assert lines[-1].startswith(f"p4bus orchestrator: cannot connect to the store {store}: "), lines
    assert not any("Traceback" in line or "s3cret" in line for line in lines), lines
