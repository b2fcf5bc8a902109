"""Which events the orchestrator believes: the broker's word on who published, not the body's.

Every event reaches the orchestrator with its publisher, the key name the broker authenticated
the sending connection by (``protocol.Delivered``). An agent's key name is its agent id, so the
events an agent publishes about its commands (``cmd.*``, ``log.*``) must name that same agent as
their ``source`` (and ``agent``): anything else was forged by another key. Events of the other
kinds (``agent.*`` from masters, ``job.*`` from the orchestrator) carry a service id, not a key
name, as their source; the orchestrator treats ``agent.*`` events only as hints to reconcile
through the masters, whose answers come over authenticated request sockets.

A command's events are then taken only from the agent the command was sent to
(``EarlyEvents`` holds those that arrive before the dispatch reply names it).

On an insecure bus the publisher is "" and none of this can be checked: the orchestrator falls
back to trusting the body, and says so once in its log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import protocol as P
from common import topics

# Kinds whose events are an agent's word about its own commands.
AGENT_KINDS = frozenset({topics.CMD, topics.LOG})
# A command has one cmd_started and one cmd_done: more than this from one publisher before the
# dispatch reply is noise (or an attack), not worth holding.
EARLY_PER_PUBLISHER = 2
# Publishers whose early events are held per command; beyond it an event is dropped (the
# command's outcome still reaches the orchestrator through the dispatch reply and reconciling).
EARLY_PUBLISHERS = 4


def claimed_agents(ev: P.Event) -> set[str] | None:
    """Every agent name an agent-published event's body gives (its source, and the agent it
    names where it names one), or None for events of the other kinds."""
    if topics.kind(ev.topic) not in AGENT_KINDS:
        return None
    names = {ev.source}
    if isinstance(ev, P.CmdStarted):
        names.add(ev.agent)
    elif isinstance(ev, P.CmdDone) and ev.status.agent:
        names.add(ev.status.agent)
    return names


def source_forged(ev: P.Event, publisher: str) -> bool:
    """True when an authenticated publisher sent an agent's event in another agent's name."""
    names = claimed_agents(ev)
    return bool(publisher) and names is not None and names != {publisher}


@dataclass
class EarlyEvents:
    """Events of commands still PENDING (the dispatch reply, which names the agent, has not
    arrived), held per command and publisher until it does."""

    held: dict[str, dict[str, list[P.Delivered]]] = field(default_factory=dict)

    def hold(self, cmd_id: str, got: P.Delivered) -> bool:
        """Keep ``got`` for ``cmd_id``; False when over the bounds (dropped)."""
        by_publisher = self.held.setdefault(cmd_id, {})
        events = by_publisher.get(got.publisher)
        if events is None:
            if len(by_publisher) >= EARLY_PUBLISHERS:
                return False
            events = by_publisher[got.publisher] = []
        if len(events) >= EARLY_PER_PUBLISHER:
            return False
        events.append(got)
        return True

    def release(self, cmd_id: str, agent: str) -> tuple[list[P.Delivered], int]:
        """The held events of ``cmd_id`` from ``agent`` (the one it was sent to), and how many
        from others were dropped."""
        by_publisher = self.held.pop(cmd_id, {})
        mine = by_publisher.pop(agent, [])
        return mine, sum(len(events) for events in by_publisher.values())

    def forget(self, keep: set[str]) -> int:
        """Drop what is held for commands not in ``keep`` (no longer PENDING); how many events."""
        gone = [cmd_id for cmd_id in self.held if cmd_id not in keep]
        dropped = 0
        for cmd_id in gone:
            dropped += sum(len(events) for events in self.held.pop(cmd_id).values())
        return dropped
