"""The dashboard under load: 100 SSE clients following one busy job, and the first paint of a
job page with 500,000 lines.

A real stack (CURVE on) with the web service; the job's ``p4 sync`` is preceded by a producer
that prints LINES_PER_S lines a second for SECONDS seconds, each line carrying the time it was
written. CLIENTS threads follow the job's event stream over HTTP, as browsers do, and note
each line's lag (received - written). The web process's CPU comes from /proc. Then a job whose
sync prints 500,000 lines; headless Chromium (the distribution's, if installed) opens its page
and the clock runs from navigation to the last line being on screen.

    python -m bench.web [--clients 100] [--seconds 10] [--rate 2000]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import common as B
from common.rpc import OrchestratorClient
from common.zmqutil import free_port_base
from p4bus.harness.stack import Stack, wait_for
from p4bus.harness.workspaces import agent_settings, orchestrator_settings, search_path, seed_workspace
from p4bus.web.tokens import TokenFile
from p4sim.tools import write_shim

PRODUCER = """import sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
start = time.time(); n = 0
while time.time() - start < seconds:
    n += 1
    sys.stdout.write(f"t={time.time():.6f} line {n}\\n"); sys.stdout.flush()
    time.sleep(max(0.0, start + n / rate - time.time()))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=2000, help="lines a second from the busy command")
    ap.add_argument("--lines", type=int, default=500_000, help="lines of the first-paint job")
    args = ap.parse_args()
    print(B.machine())
    tmp = Path(tempfile.mkdtemp(prefix="p4bus-bench-web-"))
    try:
        stack, port = _stack(tmp, args)
        try:
            _follow(stack, port, tmp, args)
            _first_paint(stack, port, args)
        finally:
            stack.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _stack(tmp: Path, args: argparse.Namespace) -> tuple[Stack, int]:
    real = write_shim(tmp / "p4sim-bin")
    (tmp / "producer.py").write_text(PRODUCER)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    # `p4 sync` in workspace "busy" first runs the producer; in "big", prints the big output.
    (bin_dir / "p4").write_text(
        "#!/bin/sh\n"
        f'case "$1:$PWD" in\n'
        f"  sync:{tmp}/busy/*) {sys.executable} {tmp}/producer.py {args.rate} {args.seconds} ;;\n"
        f"  sync:{tmp}/big/*) seq -f 'big-line-%.0f' 1 {args.lines} ;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    (bin_dir / "p4").chmod(0o755)
    seeds = [seed_workspace(tmp / name, name) for name in ("busy", "big")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    tree = {
        "state_dir": str(tmp / "state"),
        "port_base": free_port_base(6),
        "agent": {**agent_settings(seeds), "allowed_executables": ["p4"]},
        "orchestrator": {"workspaces": orchestrator_settings(seeds)},
        "web": {"bind": f"127.0.0.1:{port}"},
    }
    stack = Stack(tree, tmp, log_dir=tmp / "logs", env={"PATH": search_path(bin_dir)})
    for service in ("broker", "master", "orchestrator", "agent", "web"):
        stack.start(service)
    stack.wait_ready(agents=1, timeout=B.START_TIMEOUT_S)
    return stack, port


def _submit(stack: Stack, workspace: str) -> str:
    with OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security()) as oc:
        return oc.submit(workspace=workspace, source="//depot/dev/...", target="//depot/main/...").job_id


def _cookie(port: int, token: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = f"token={token}"
    conn.request("POST", "/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    cookie = (conn.getresponse().getheader("set-cookie") or "").split(";", 1)[0]
    conn.close()
    return cookie


def _client(port: int, cookie: str, job_id: str, got: list[tuple[float, bytes]], stop: threading.Event) -> None:
    """Follow the stream, noting when each message arrived; decoding waits until the run is over,
    so that 100 clients in one Python process measure the server, not their own GIL."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/jobs/{job_id}/events", headers={"Cookie": cookie})
    resp = conn.getresponse()
    while not stop.is_set():
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            got.append((time.time(), line))
            if b'"k":"job","state":"DONE"' in line or b'"k":"job","state":"FAILED"' in line:
                break
    conn.close()


def _lags(got: list[tuple[float, bytes]]) -> list[float]:
    """Each written line's lag: when its message arrived minus the time the line carries."""
    lags: list[float] = []
    partial = b""
    for now, line in got:
        for op in json.loads(line[6:]):
            if op["k"] == "out" and op["s"] == 1:
                *whole, partial = (partial + base64.b64decode(op["d"])).split(b"\n")
                lags += [now - float(w[2:19]) for w in whole if w.startswith(b"t=")]
    return lags


def _follow(stack: Stack, port: int, tmp: Path, args: argparse.Namespace) -> None:
    cookie = _cookie(port, TokenFile(stack.config().web_tokens_path).add("bench", "viewer"))
    job_id = _submit(stack, "busy")
    web_pid = stack.proc("web").pid
    got: list[list[tuple[float, bytes]]] = [[] for _ in range(args.clients)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(port, cookie, job_id, got[i], stop), daemon=True)
        for i in range(args.clients)
    ]
    cpu0, t0 = B.proc_usage(web_pid).cpu_s, time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.seconds + 120)
    stop.set()
    cpu = B.proc_usage(web_pid).cpu_s - cpu0
    wall = time.monotonic() - t0
    lags = [_lags(g) for g in got]
    every = [x for xs in lags for x in xs]
    per_client_p99 = [sorted(xs)[int(len(xs) * 0.99) - 1] for xs in lags if xs]
    lines = [len(xs) for xs in lags]
    print(
        B.table(
            ["clients", "lines each (min..max)", "lag p50", "lag p99", "worst client's p99", "max", "web CPU"],
            [
                [
                    args.clients,
                    f"{min(lines)}..{max(lines)}",
                    f"{statistics.median(every) * 1000:.0f} ms",
                    f"{sorted(every)[int(len(every) * 0.99) - 1] * 1000:.0f} ms",
                    f"{max(per_client_p99) * 1000:.0f} ms",
                    f"{max(every) * 1000:.0f} ms",
                    f"{cpu:.1f} s in {wall:.1f} s ({100 * cpu / wall:.0f} % of a core)",
                ]
            ],
        )
    )


def _first_paint(stack: Stack, port: int, args: argparse.Namespace) -> None:
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("first paint: skipped (needs chromium and playwright)")
        return
    job_id = _submit(stack, "big")
    with OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security()) as oc:
        wait_for(lambda: oc.job(job_id).state in ("DONE", "FAILED"), 300, f"{job_id} to end", interval=0.5)
    token = TokenFile(stack.config().web_tokens_path).add("bench-op", "operator")
    last = f"big-line-{args.lines}\n"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/login")
        page.fill("input[name=token]", token)
        page.click("button")
        page.wait_for_url("**/jobs")
        rows = []
        for _ in range(3):
            t0 = time.monotonic()
            page.goto(f"http://127.0.0.1:{port}/jobs/{job_id}")
            page.wait_for_function(
                f"() => document.getElementById('log').textContent.includes({last!r})", timeout=120_000
            )
            rows.append(time.monotonic() - t0)
        dom = page.evaluate("document.getElementById('log').textContent.split('\\n').length")
        browser.close()
    print(
        B.table(
            ["job page", "navigation to last line on screen (3 loads)", "lines in the page"],
            [[f"{args.lines:,} lines", " / ".join(f"{r * 1000:.0f} ms" for r in rows), dom]],
        )
    )


if __name__ == "__main__":
    sys.exit(main())
