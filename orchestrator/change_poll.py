"""Asking a workspace's agent for a source's newest submitted change, off the orchestrator's loop.

As integration bots do: `p4 -ztag changes -m1 -s submitted SOURCE` (after `p4 branch -o` for a
branch spec, whose view names the sources). The orchestrator's loop hands a question over and
picks the answer up on a later tick; a thread of its own sends the commands and waits for
them, so a slow p4 server never holds up events or the API.

A poll only reads. One that is lost (agent gone, timeout, orchestrator stopped) is simply asked
again at the schedule's next interval: nothing it did needs undoing or may be repeated.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from common import logs
from common import protocol as P
from common.auth import Security
from common.rpc import MasterClient, RequestError
from orchestrator.pipeline import p4parse
from orchestrator.pipeline.model import Workspace
from orchestrator.pipeline.p4cmd import p4_env

log = logs.get("orchestrator.poll")

# How long one p4 command of a poll may take before the poll is given up (asked again later).
POLL_TIMEOUT_S = 60.0
# While a command runs, its agent's spool is asked this often whether it has finished.
QUERY_EVERY_S = 0.1

Runner = Callable[[list[str]], P.CmdStatus]


@dataclass(frozen=True)
class Question:
    key: str  # the schedule's name
    workspace: Workspace
    agent: str | None
    pool: str | None
    source: str | None
    branch_spec: str | None


@dataclass(frozen=True)
class Answer:
    key: str
    change: int | None  # the newest submitted change; 0: the source has none
    error: str = ""  # why there is no answer (then change is None)


def latest_change(run: Runner, source: str | None, branch_spec: str | None) -> int:
    """The newest submitted change under ``source`` (or the sources of ``branch_spec``'s view);
    ValueError with p4's line when p4 refuses."""
    sources = [source] if source else []
    if branch_spec:
        status = run(["-ztag", "branch", "-o", branch_spec])
        spec = p4parse.parse_ztag_spec(_text(status))
        if status.exit_code != 0:
            raise ValueError(f"p4 branch -o {branch_spec}: {_refusal(status)}")
        # `branch -o` of an unknown name prints a template; only a stored spec has Access.
        if "Access" not in spec:
            raise ValueError(f"branch spec {branch_spec!r} does not exist on the server")
        sources = [s for s, _ in p4parse.view_mappings(spec)]
    status = run(["-ztag", "changes", "-m1", "-s", "submitted", *sources])
    if status.exit_code != 0:
        raise ValueError(f"p4 changes: {_refusal(status)}")
    numbers = [int(r["change"]) for r in p4parse.parse_ztag(_text(status)) if r.get("change", "").isdigit()]
    return max(numbers, default=0)


def _text(status: P.CmdStatus) -> str:
    return status.stdout.decode("utf-8", "replace")


def _refusal(status: P.CmdStatus) -> str:
    if status.error:
        return status.error
    stderr = status.stderr.decode("utf-8", "replace")
    return p4parse.error_line(stderr, _text(status)) or f"exited {status.exit_code}"


class ChangePoller:
    """One thread, started with the first question, answering questions in turn."""

    def __init__(self, masters: list[str], security: Security | None, ctx: zmq.Context) -> None:
        self.masters = masters
        self.security = security
        self.ctx = ctx
        self._questions: queue.SimpleQueue[Question] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ask(self, q: Question) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="change-poller", daemon=True)
            self._thread.start()
        self._questions.put(q)

    def answers(self) -> list[Answer]:
        out = []
        while True:
            try:
                out.append(self._answers.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _serve(self) -> None:
        with MasterClient(self.masters, self.security, timeout=5.0, ctx=self.ctx) as mc:
            while not self._stop.is_set():
                try:
                    q = self._questions.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._answers.put(self._answer(mc, q))

    def _answer(self, mc: MasterClient, q: Question) -> Answer:
        def run(args: list[str]) -> P.CmdStatus:
            spec = P.CmdSpec(
                argv=[q.workspace.p4, *args], env=p4_env(q.workspace), cwd=q.workspace.root, timeout=POLL_TIMEOUT_S
            )
            reply = mc.exec(spec, agent=q.agent, pool=q.pool, workspace=q.workspace.name)
            return self._wait(mc, reply)

        try:
            return Answer(q.key, latest_change(run, q.source, q.branch_spec))
        except (ValueError, RequestError, TimeoutError) as exc:
            log.info("poll.failed", schedule=q.key, error=str(exc))
            return Answer(q.key, None, str(exc))

    def _wait(self, mc: MasterClient, reply: P.ExecReply) -> P.CmdStatus:
        status = reply.status
        # The agent kills the command at its timeout; a little more for its answer to come.
        for _ in range(int((POLL_TIMEOUT_S + 10) / QUERY_EVERY_S)):
            if status.state == "done":
                return status
            if self._stop.wait(QUERY_EVERY_S):
                break
            status = mc.query([reply.cmd_id], agent=reply.agent)[0]
        raise TimeoutError(f"the poll's command {reply.cmd_id} on {reply.agent} did not finish")
