"""The dashboard with two replicated brokers: a job's page (its SSE stream, read with a real
HTTP client) keeps moving after the first broker is SIGKILLed for good, shows each event once
and every byte equal to the agent's spool; its ids are positions in both journals that resume
exactly, and an old browser's single journal id gets a fresh snapshot (p4bus/web/journal.py)."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import socket
from collections.abc import Callable

import pytest

from p4bus.web.tokens import TokenFile

pytestmark = pytest.mark.timeout(180)

Message = tuple[str, list[dict]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Page:
    """The job's SSE stream as a browser's EventSource reads it."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "POST", "/login", body=f"token={token}", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        self.cookie = (conn.getresponse().getheader("set-cookie") or "").split(";", 1)[0]
        conn.close()

    def read(self, job_id: str, last_id: str, until: Callable[[list[dict]], bool]) -> list[Message]:
        """(id, ops) of each message until one for which ``until(ops)`` (called on each)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": self.cookie, **({"Last-Event-ID": last_id} if last_id else {})}
        conn.request("GET", f"/jobs/{job_id}/events", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        out: list[Message] = []
        msg_id, data = None, None
        try:
            while True:
                line = resp.readline().decode().rstrip("\n")
                if line.startswith("id: "):
                    msg_id = line[4:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif not line and msg_id is not None and data is not None:
                    out.append((msg_id, data))
                    if until(data):
                        return out
                    msg_id, data = None, None
        finally:
            conn.close()


def _state(state: str) -> Callable[[list[dict]], bool]:
    return lambda ops: any(op["k"] == "job" and op["state"] == state for op in ops)


def _outputs(messages: list[Message]) -> dict[tuple[str, int], bytes]:
    """Each command's streams; every byte exactly once, in order (no gap, no overlap)."""
    got: dict[tuple[str, int], bytearray] = {}
    for _id, ops in messages:
        for op in ops:
            if op["k"] == "out":
                buf = got.setdefault((op["cmd"], op["s"]), bytearray())
                assert op["o"] == len(buf), ("a gap or an overlap", op["cmd"], op["s"], op["o"], len(buf))
                buf += base64.b64decode(op["d"])
    return {k: bytes(v) for k, v in got.items()}


def test_a_jobs_page_keeps_moving_after_the_first_broker_dies_and_shows_each_event_once(jobs):
    jobs.workspace("ws1", "conflict")
    for name, extra in jobs.stack.replicate_brokers(2).items():
        jobs.procs[name] = jobs.stack.start("broker", name=name, extra=extra)
    jobs.start("master", "orchestrator")
    port = _free_port()
    jobs.stack.tree["web"] = {"bind": f"127.0.0.1:{port}"}
    token = TokenFile(jobs.stack.config().web_tokens_path).add("vera", "viewer")
    jobs.procs["web"] = jobs.stack.start("web")
    jobs.stack.wait_ready(agents=1)
    page = _Page(port, token)

    job_id = jobs.submit("ws1")
    before = page.read(job_id, "", _state("WAITING_RESOLVE"))
    # Both brokers were read: positions in both journals.
    assert all(len(i.split(".")) == 2 for i, _ in before), [i for i, _ in before]

    jobs.stack.kill("broker")  # for good
    jobs.p4("ws1", "resolve", "-at")
    with jobs.orch() as oc:
        oc.resume(job_id)
    # The same page, resumed from where it was: it moves on to the end with the survivor.
    after = page.read(job_id, before[-1][0], _state("DONE"))
    view = jobs.wait_state(job_id)
    assert view.state == "DONE", view.reason
    whole = before + after
    assert after[0][1][0]["k"] != "reset", "resumed with a snapshot instead of the messages after its id"
    positions = [tuple(int(p) for p in i.split(".")) for i, _ in whole]
    assert all(a <= b for x, y in itertools.pairwise(positions) for a, b in zip(x, y, strict=True))

    # Each event once: each command one section, one end; every byte once and as spooled.
    ops = [op for _, m in whole for op in m]
    sections = [op["cmd"] for op in ops if op["k"] == "section"]
    assert len(sections) == len(set(sections)) == len([r for r in view.timeline if r.agent]), sections
    ends = [op["cmd"] for op in ops if op["k"] == "done"]
    assert sorted(ends) == sorted(sections)
    got = _outputs(whole)
    with jobs.masters() as mc:
        for run in view.timeline:
            for stream in (1, 2):
                spool = mc.fetch(run.cmd_id, stream, 0, 8 << 20, agent=run.agent).data
                assert got.get((run.cmd_id, stream), b"") == spool, (run.stage, stream)
    after_ops = [op["k"] for _, m in after for op in m]
    assert "section" in after_ops and "out" in after_ops, "no command ran after the kill?"

    # A reconnect after any id is exact; an old browser's single journal id gets a snapshot.
    cut = len(whole) // 2
    assert page.read(job_id, whole[cut][0], _state("DONE")) == whole[cut + 1 :]
    old = page.read(job_id, "5", _state("DONE"))
    assert old[0][1][0] == {"k": "reset"}

    # The dead broker cost the feed one failed read, not one per read.
    web_log = jobs.procs["web"].log_path.read_text()
    assert web_log.count("feed.broker_unavailable") == 1, web_log.count("feed.broker_unavailable")
