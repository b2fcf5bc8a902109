"""Who may do what: the one table of roles, ZAP domains and request types.

A key's role is in the keyring; a server socket has a ZAP domain. ZAP lets a key connect to a
domain only when some request of that domain (or, for the event sockets, the domain itself)
admits its role; each request is then checked again against the role the keyring gives the
key *now*, so a revoked or re-roled key loses its rights on connections already open.
"""

from __future__ import annotations

AGENT = "agent"
MASTER = "master"
BROKER = "broker"
ORCHESTRATOR = "orchestrator"
OPERATOR = "operator"
VIEWER = "viewer"
# The dashboard process (p4bus web): acts on jobs for the people it authenticates and reads the
# bus, but may not run commands on agents (no exec/kill), unlike an operator key.
WEB = "web"
ROLES = (AGENT, MASTER, BROKER, ORCHESTRATOR, OPERATOR, VIEWER, WEB)
# Roles whose keys servers hold; clients pin the public key of the one they connect to.
SERVER_ROLES = (BROKER, MASTER, ORCHESTRATOR)

MASTER_AGENTS = "master-agents"
MASTER_CLIENTS = "master-clients"
ORCHESTRATOR_API = "orchestrator-api"
BROKER_PUBLISH = "broker-publish"
BROKER_SUBSCRIBE = "broker-subscribe"
BROKER_REPLAY = "broker-replay"

_EVERY = frozenset(ROLES)
_READ_BUS = frozenset({VIEWER, OPERATOR, ORCHESTRATOR, WEB})
_RUN = frozenset({OPERATOR, ORCHESTRATOR})
_JOB_READ = frozenset({VIEWER, OPERATOR, WEB})
_JOB_ACT = frozenset({OPERATOR, WEB})

# domain -> request tag (protocol.py's ``t``) -> roles that may send it.
REQUESTS: dict[str, dict[str, frozenset[str]]] = {
    MASTER_AGENTS: dict.fromkeys(
        ("hello", "hb", "bye", "exec_r", "kill_r", "query_r", "fetch_r", "error"), frozenset({AGENT})
    ),
    MASTER_CLIENTS: {
        "exec": _RUN,
        "kill": _RUN,
        "query": _READ_BUS,
        "fetch": _READ_BUS,
        "agents": _READ_BUS,
        "ping": _READ_BUS,
        "stats": _READ_BUS,
    },
    ORCHESTRATOR_API: {
        "submit": _JOB_ACT,
        "resume": _JOB_ACT,
        "cancel": _JOB_ACT,
        "retry": _JOB_ACT,
        "cleanup": _JOB_ACT,
        "approve": _JOB_ACT,
        "get_job": _JOB_READ,
        "list_jobs": _JOB_READ,
        # Templates and schedules start jobs: changing them is an operator's, reading a viewer's.
        **dict.fromkeys(("put_template", "remove_template", "put_schedule", "remove_schedule"), frozenset({OPERATOR})),
        # (The dashboard shows none of them, so its key may not read them either.)
        **dict.fromkeys(("get_template", "list_templates", "list_schedules"), frozenset({VIEWER, OPERATOR})),
        "ping": _JOB_READ,
        "stats": _JOB_READ,
    },
    BROKER_REPLAY: dict.fromkeys(("replay", "ping", "stats"), _EVERY),
}

# domain -> roles that may connect at all (checked by ZAP, before any message).
CONNECT: dict[str, frozenset[str]] = {
    **{domain: frozenset().union(*table.values()) for domain, table in REQUESTS.items()},
    BROKER_PUBLISH: frozenset({AGENT, MASTER, ORCHESTRATOR}),
    BROKER_SUBSCRIBE: _EVERY,
}


def may_connect(domain: str, role: str | None) -> bool:
    return role is not None and role in CONNECT.get(domain, ())


def may_send(domain: str, role: str | None, tag: str) -> bool:
    return role is not None and role in REQUESTS.get(domain, {}).get(tag, ())
