"""Which agents and pools exist: a submit for a name no master has ever seen is refused.

Names are learned from agents' HELLOs (agent.up events) and, when a submit names one not
learned yet, from the masters themselves (each remembers every agent that said HELLO since
it started): such a submit is answered once every master has answered a listing (``Listing``)
or timed out, without the orchestrator's loop waiting for it. A name seen once is kept: its agent may be offline now, and a job for it waits
for it (with the dispatch deadline) rather than being refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from common import protocol as P


class KnownAgents:
    def __init__(self) -> None:
        self.agents: set[str] = set()
        self.pools: set[str] = set()

    def saw(self, infos: Iterable[P.AgentInfo]) -> None:
        for info in infos:
            self.agents.add(info.agent_id)
            self.pools.update(info.pools)

    def unknown(self, agent: str | None, pool: str | None) -> str:
        """What no master has been seen to know ("" when everything named is known)."""
        if agent and agent not in self.agents:
            return f"agent {agent!r}"
        if pool and pool not in self.pools:
            return f"pool {pool!r}"
        return ""

    def refusal(self, agent: str | None, pool: str | None, ask: Callable[[], list[list[P.AgentInfo] | None]]) -> str:
        """Why a job for ``agent``/``pool`` is refused, or "" to accept it. ``ask`` lists each
        master's agents (None for a master that did not answer); it is only called for a name
        not known yet. With no master answering nothing can be told, and the job is accepted."""
        if not self.unknown(agent, pool):
            return ""
        answers = ask()
        for infos in answers:
            self.saw(infos or [])
        what = self.unknown(agent, pool)
        if not what or all(infos is None for infos in answers):
            return ""
        names = sorted(self.pools if what.startswith("pool") else self.agents)
        return (
            f"no master has seen {what} (known: {', '.join(names) or 'none'}): check the name, "
            f"or start that agent first"
        )


Answers = list[list[P.AgentInfo] | None]


@dataclass
class Listing:
    """One round of "which agents have you seen?" to every master, and the submits waiting for
    it. A submit that comes while a round is out waits for that round rather than starting one."""

    masters: int
    answers: dict[int, list[P.AgentInfo] | None] = field(default_factory=dict)
    waiting: list[Callable[[], None]] = field(default_factory=list)

    def answer(self, master: int, infos: list[P.AgentInfo] | None) -> bool:
        """Master ``master``'s agents (None: it did not answer); True once every master has."""
        self.answers[master] = infos
        return len(self.answers) == self.masters

    def result(self) -> Answers:
        return [self.answers.get(i) for i in range(self.masters)]
