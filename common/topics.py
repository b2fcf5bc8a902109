"""Event topics. Prefix-filterable: ``log.<job>.<cmd>``, ``cmd.<job>.<cmd>``, ``job.<job>``,
``agent.<agent>``, ``beacon.<source>``. A command run outside a job (``p4bus run``) uses the
job id ``-``."""

from __future__ import annotations

LOG = "log"
CMD = "cmd"
JOB = "job"
AGENT = "agent"
BEACON = "beacon"
NO_JOB = "-"


def log(job_id: str, cmd_id: str) -> str:
    return f"{LOG}.{job_id or NO_JOB}.{cmd_id}"


def cmd(job_id: str, cmd_id: str) -> str:
    return f"{CMD}.{job_id or NO_JOB}.{cmd_id}"


def job(job_id: str) -> str:
    return f"{JOB}.{job_id}"


def agent(agent_id: str) -> str:
    return f"{AGENT}.{agent_id}"


def beacon(source: str) -> str:
    return f"{BEACON}.{source}"


def kind(topic: str) -> str:
    """The first segment: the unit over which ``seq`` counts without holes."""
    return topic.split(".", 1)[0]
