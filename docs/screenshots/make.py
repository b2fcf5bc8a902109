"""Regenerate the dashboard screenshots shown in README: `python docs/screenshots/make.py`.

A stack on loopback with two p4sim workspaces: one job submitted through the page waits on a
conflict, one goes straight through; headless Chromium (the distribution's) takes each page.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402

from common.rpc import OrchestratorClient  # noqa: E402
from common.zmqutil import free_port_base  # noqa: E402
from p4bus.harness.stack import SERVICES, Stack, wait_for  # noqa: E402
from p4bus.harness.workspaces import agent_settings, orchestrator_settings, p4sim_path, seed_workspace  # noqa: E402
from p4bus.web.tokens import TokenFile  # noqa: E402


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="p4bus-screenshots-"))
    seeds = [seed_workspace(tmp / "rel", "rel", scenario="conflict"), seed_workspace(tmp / "main", "main")]
    tree = {
        "state_dir": str(tmp / "state"),
        "port_base": free_port_base(7),
        "agent": agent_settings(seeds),
        "orchestrator": {"workspaces": orchestrator_settings(seeds)},
    }
    stack = Stack(tree, tmp, log_dir=tmp / "logs", env={"PATH": p4sim_path(tmp / "bin")})
    try:
        for service in SERVICES:
            stack.start(service)
        stack.wait_ready(agents=1)
        cfg = stack.config()
        url = cfg.web_url()
        token = TokenFile(cfg.web_tokens_path).add("alice", "operator")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "login")
            page.fill("input[name=token]", token)
            page.click("button")
            page.goto(url + "submit")
            facts = seeds[0].facts
            page.select_option("select[name=workspace]", "rel")
            page.fill("input[name=source]", facts["source"])
            page.fill("input[name=target]", facts["target"])
            page.fill("input[name=desc]", "integrate dev to main for 2.4")
            page.screenshot(path=str(HERE / "submit.png"))
            page.click("#submit")
            page.wait_for_selector("#conflicts", timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(HERE / "conflict.png"))
            page.locator("#log").scroll_into_view_if_needed()
            page.screenshot(path=str(HERE / "output.png"))
            with OrchestratorClient([stack.endpoint("orchestrator_api")], stack.security()) as oc:
                m = seeds[1].facts
                done = oc.submit(workspace="main", source=m["source"], target=m["target"], desc="nightly dev to main")
                wait_for(lambda: oc.job(done.job_id).state == "DONE", 60, "the clean job")
            page.goto(url + "jobs")
            page.screenshot(path=str(HERE / "jobs.png"))
            page.goto(url + "agents")
            page.screenshot(path=str(HERE / "agents.png"))
            browser.close()
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
