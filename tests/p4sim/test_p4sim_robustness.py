"""Concurrent invocations on one server, fault injection, seeding, the shim."""

import json
import os
import subprocess
import time

import pytest
from conftest import new_change

pytestmark = pytest.mark.timeout(60)


def test_ten_concurrent_invocations_do_not_corrupt(clean):
    p4, _info = clean
    clients = []
    for i in range(10):
        root = p4.cwd.parent / f"ws{i}"
        spec = p4("client", "-o", f"ws{i}").out.replace(str(p4.cwd), str(root))
        assert p4("client", "-i", stdin=spec).rc == 0
        root.mkdir()
        (root / "main").mkdir()
        (root / "main" / f"file{i}.txt").write_text(f"{i}\n")
        env = {"P4CLIENT": f"ws{i}"}
        assert p4("add", "main/" + f"file{i}.txt", env=env, cwd=root).rc == 0
        clients.append((root, env))
    procs = [
        subprocess.Popen(
            [str(p4.p4), "submit", "-d", f"add {i}"],
            cwd=root,
            text=True,
            env={**p4.env, **env, "PWD": str(root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i, (root, env) in enumerate(clients)
    ]
    procs += [
        subprocess.Popen(
            [str(p4.p4), "change", "-i"],
            stdin=subprocess.PIPE,
            text=True,
            env={**p4.env, "PWD": str(p4.cwd)},
            cwd=p4.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(10)
    ]
    for proc in procs[10:]:
        proc.stdin.write("Change: new\nDescription:\n\tconcurrent\n")
        proc.stdin.close()
    results = [(proc.wait(30), proc.stdout.read(), proc.stderr.read()) for proc in procs]
    assert all(rc == 0 and err == "" for rc, _, err in results), results
    numbers = [int(out.split()[1]) for _, out, _ in results[10:]]
    submitted = [
        int(out.splitlines()[-1].split()[-1].rstrip(".")) if "renamed" in out else int(out.splitlines()[-1].split()[1])
        for _, out, _ in results[:10]
    ]
    assert len(set(numbers + submitted)) == 20
    assert len(p4("changes", "-s", "submitted").out_lines) == 4 + 10
    assert len(p4("changes", "-s", "pending").out_lines) == 10
    r = p4("sync", "//depot/main/...")
    assert sum(1 for line in r.out_lines if "/file" in line) == 10


def test_fault_refused(clean):
    p4, _info = clean
    r = p4("sync", env={"P4SIM_FAULT": "refused"})
    assert r.rc == 1 and r.out == ""
    assert r.err_lines[:2] == ["Perforce client error:", "\tConnect to server failed; check $P4PORT."]


def test_fault_expired(clean):
    p4, _ = clean
    r = p4("opened", env={"P4SIM_FAULT": "expired"})
    assert (r.rc, r.out, r.err_lines) == (1, "", ["Your session has expired, please login again."])
    assert p4("info", env={"P4SIM_FAULT": "expired"}).rc == 0


def test_fault_only_first_n_calls(clean, tmp_path):
    p4, _ = clean
    env = {"P4SIM_FAULT": "refused", "P4SIM_FAULT_COUNT": "2", "P4SIM_FAULT_STATE": str(tmp_path / "count")}
    assert [p4("changes", "-m1", env=env).rc for _ in range(4)] == [1, 1, 0, 0]
    once = {"P4SIM_FAULT": "expired", "P4SIM_FAULT_ONCE": str(tmp_path / "once")}
    assert [p4("changes", "-m1", env=once).rc for _ in range(2)] == [1, 0]


def test_fault_delay_streams_output(make_server):
    p4, info = make_server("big:6")
    proc = subprocess.Popen(
        [str(p4.p4), "sync", info["target"]],
        cwd=p4.cwd,
        stdout=subprocess.PIPE,
        env={**p4.env, "PWD": str(p4.cwd), "P4SIM_DELAY_PER_FILE": "0.2"},
        text=True,
    )
    start = time.monotonic()
    first = proc.stdout.readline()
    first_at = time.monotonic() - start
    rest = proc.stdout.read()
    total = time.monotonic() - start
    assert proc.wait() == 0
    assert first.startswith("//depot/main/big/f000000.txt#1 - added as ")
    assert len(rest.splitlines()) == 5
    assert total >= 1.2 and first_at < total - 0.6  # the first line came long before the end


def test_fault_die_after_lines(make_server):
    p4, info = make_server("big:6")
    r = p4("sync", info["target"], env={"P4SIM_DIE_AFTER_LINES": "2"})
    assert r.rc == -9 and len(r.out_lines) == 2


def test_seed_cli_json_and_refuses_reseed(tmp_path):
    out = subprocess.run(
        ["p4sim", "seed", str(tmp_path / "x"), "--scenario", "conflict", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    facts = json.loads(out.stdout)
    assert facts == {
        "P4PORT": f"sim:{tmp_path}/x/server",
        "P4USER": "bob",
        "P4CLIENT": "ws",
        "root": f"{tmp_path}/x/ws",
        "source": "//depot/dev/...",
        "target": "//depot/main/...",
        "conflicts": ["//depot/main/src/conflict.c"],
    }
    again = subprocess.run(["p4sim", "seed", str(tmp_path / "x")], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "already holds a p4sim server" in again.stderr


def test_seed_leaves_workspace_unsynced(clean):
    p4, info = clean
    assert os.listdir(info["root"]) == []
    assert p4("fstat", "//depot/main/README.txt").out.count("haveRev") == 0


def test_p4sim_runs_p4_commands_directly(clean):
    p4, _info = clean
    done = subprocess.run(
        ["p4sim", "-ztag", "changes", "-m1"],
        capture_output=True,
        text=True,
        env={**p4.env, "PWD": str(p4.cwd)},
        cwd=p4.cwd,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout.startswith("... change 4\n")


def test_new_change_helper_numbers(clean):
    p4, _ = clean
    assert [new_change(p4), new_change(p4)] == [5, 6]
