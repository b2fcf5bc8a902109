"""One stack with the dashboard and a headless Chromium, shared by all of tests/web (session scope).

Chromium is the distribution's (``apt-get install chromium``; .ci/run installs it), driven by
Playwright pointed at that executable: nothing is downloaded. Each test uses its own workspace
(its own p4sim server), so the tests' jobs never queue behind one another.

The agents run ``p4`` through a wrapper that, before the real p4sim, runs a test's hook for
that server and subcommand if one exists: the tests use ``sync`` hooks to write output at
moments they control (gate files), and to write a lot of it.
"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from p4bus.web.tokens import TokenFile
from tests.conftest import Stack, wait_for
from tests.e2e.conftest import JobStack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WORKSPACES = {"live": "clean", "conflict": "conflict", "cut": "clean", "big": "clean", "xss": "clean", "sse": "clean"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebStack:
    def __init__(self, jobs: JobStack, url: str) -> None:
        self.jobs = jobs
        self.url = url
        self.hooks = jobs.tmp / "hooks"
        self.hooks.mkdir()
        tokens = TokenFile(jobs.stack.config().web_tokens_path)
        self.tokens = {"olive": tokens.add("olive", "operator"), "vera": tokens.add("vera", "viewer")}

    def hook(self, workspace: str, subcommand: str, script: str) -> None:
        """Run ``script`` (sh) before p4sim whenever ``p4 SUBCOMMAND`` runs against ``workspace``."""
        port = self.jobs.seeds[workspace]["P4PORT"]
        path = self.hooks / f"{re.sub(r'[^A-Za-z0-9]', '_', port)}-{subcommand}"
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)

    def gate(self, name: str) -> Path:
        return self.jobs.tmp / f"gate-{name}"


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    stack = Stack(tmp_path_factory.mktemp("web"))
    jobs = JobStack(stack)
    for name, scenario in WORKSPACES.items():
        jobs.workspace(name, scenario)
    hooks = jobs.tmp / "hooks"
    real = (jobs.bin / "p4").read_text().splitlines()[-1]  # JobStack's wrapper ends with `exec p4sim "$@"`
    (jobs.bin / "p4").write_text(
        "#!/bin/sh\n"
        f'echo "$P4PORT $*" >> {jobs.exec_log}\n'
        f"hook={hooks}/$(printf %s \"$P4PORT\" | tr -c 'A-Za-z0-9' _)-$1\n"
        'if [ -x "$hook" ]; then "$hook"; fi\n'
        f"{real}\n"
    )
    port = _free_port()
    # A trusted proxy on loopback naming paula (tests of the header path send it; browsers do not).
    stack.tree["web"] = {
        "bind": f"127.0.0.1:{port}",
        "trusted_header": "X-Test-User",
        "trusted_proxies": ["127.0.0.1/32"],
        "users": {"paula": "viewer"},
    }
    try:
        jobs.start()
        w = WebStack(jobs, f"http://127.0.0.1:{port}/")
        stack.start("web")
        stack.wait_ready(agents=1)
        yield w
    finally:
        stack.stop_all()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def contexts(browser) -> Iterator[list]:
    """Browser contexts a test opens (login()), closed when it ends: no page of an earlier test
    keeps streaming in the background."""
    opened: list = []
    yield opened
    for ctx in opened:
        ctx.close()


def login(browser, web: WebStack, who: str = "olive", contexts: list | None = None):
    """A fresh browser context logged in as ``who``; returns its first page."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    if contexts is not None:
        contexts.append(ctx)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    page.goto(web.url + "login")
    page.fill("input[name=token]", web.tokens[who])
    page.click("button")
    page.wait_for_url(re.compile(r".*/jobs$"))
    return page


__all__ = ["WebStack", "login", "wait_for"]
