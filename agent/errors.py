"""The one exception of the agent's policy modules (agent/policy.py, agent/p4args.py,
agent/ssh_policy.py), apart from them so that they can share it."""


class Refusal(Exception):
    """The request is well-formed but this agent will not run it; the message says why."""
