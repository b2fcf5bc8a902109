"""The job output stream over plain HTTP: journal ids as SSE ids, resume after any id with no
gap and no duplicate, and every byte equal to the agent's spool."""

from __future__ import annotations

import base64
import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.web.conftest import WebStack

pytestmark = pytest.mark.timeout(120)


def _session(web: WebStack) -> str:
    u = urlsplit(web.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(
        "POST",
        "/login",
        body=f"token={web.tokens['vera']}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    cookie = conn.getresponse().getheader("set-cookie") or ""
    conn.close()
    return cookie.split(";", 1)[0]


def _messages(web: WebStack, cookie: str, job_id: str, after: int) -> list[tuple[int, list[dict]]]:
    """(id, ops) of each message after ``after``, until the job's DONE state arrives."""
    u = urlsplit(web.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", f"/jobs/{job_id}/events", headers={"Cookie": cookie, "Last-Event-ID": str(after)})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
    out: list[tuple[int, list[dict]]] = []
    msg_id, data = None, None
    try:
        while True:
            line = resp.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                msg_id = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif not line and msg_id is not None and data is not None:
                out.append((msg_id, data))
                if any(op["k"] == "job" and op["state"] == "DONE" for op in data):
                    return out
                msg_id, data = None, None
    finally:
        conn.close()


def test_resume_after_any_id_is_exact_and_bytes_match_the_spool(web: WebStack) -> None:
    web.hook("sse", "sync", "seq -f 'sse-line-%.0f' 1 20000\n")
    job_id = web.jobs.submit("sse")
    view = web.jobs.wait_state(job_id, ("DONE",))
    cookie = _session(web)
    whole = _messages(web, cookie, job_id, 0)
    ids = [i for i, _ in whole]
    assert ids == sorted(set(ids)) and len(ids) > 3

    got: dict[tuple[str, int], bytearray] = {}
    for _, ops in whole:
        for op in ops:
            if op["k"] == "out":
                buf = got.setdefault((op["cmd"], op["s"]), bytearray())
                assert op["o"] == len(buf), "a gap or an overlap in the stream"
                buf += base64.b64decode(op["d"])
    with web.jobs.masters() as mc:
        for run in view.timeline:
            spool = mc.fetch(run.cmd_id, 1, 0, 8 << 20, agent=run.agent).data
            assert bytes(got.get((run.cmd_id, 1), b"")) == spool, run.stage

    for cut in (ids[0], ids[len(ids) // 2], ids[-2]):
        assert _messages(web, cookie, job_id, cut) == [m for m in whole if m[0] > cut]


def test_a_silent_orchestrator_is_one_line_and_the_web_keeps_running(web: WebStack) -> None:
    cookie = _session(web)
    u = urlsplit(web.url)

    def get(path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("GET", path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, body

    web.jobs.stack.kill("orchestrator")
    try:
        status, body = get("/jobs/table")
        assert status == 502 and "did not answer" in body and "\n" not in body.strip()
        assert get("/healthz") == (200, "ok")
    finally:
        web.jobs.restart("orchestrator")
    web.jobs.wait_ready(1)
    assert get("/jobs/table")[0] == 200


def test_a_trusted_proxys_header_is_a_login_for_the_people_it_may_name(web: WebStack) -> None:
    u = urlsplit(web.url)

    def get(headers: dict[str, str]) -> tuple[int, str]:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("GET", "/jobs", headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, body

    status, body = get({"X-Test-User": "paula"})
    assert status == 200 and "paula" in body and 'href="/submit"' not in body  # a viewer: no Submit
    assert get({"X-Test-User": "mallory"})[0] == 401  # not in [web] users
    assert get({})[0] == 401
