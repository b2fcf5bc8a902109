"""common/roles.py: the table is the contract of docs/security.md."""

from __future__ import annotations

from typing import get_args

from common import roles
from common.protocol import ClientRequest, OrchestratorRequest, ReplayRequest

ALL = set(roles.ROLES)


def _tags(union: object) -> set[str]:
    return {str(c.__struct_config__.tag) for c in get_args(union)}


def test_every_request_type_of_every_router_has_a_rule() -> None:
    assert set(roles.REQUESTS[roles.MASTER_CLIENTS]) == _tags(ClientRequest)
    assert set(roles.REQUESTS[roles.ORCHESTRATOR_API]) == _tags(OrchestratorRequest)
    assert set(roles.REQUESTS[roles.BROKER_REPLAY]) == _tags(ReplayRequest)


def test_master_clients() -> None:
    for tag in ("exec", "kill"):
        assert {r for r in ALL if roles.may_send(roles.MASTER_CLIENTS, r, tag)} == {"operator", "orchestrator"}
    for tag in ("query", "fetch", "agents", "ping", "stats"):
        assert {r for r in ALL if roles.may_send(roles.MASTER_CLIENTS, r, tag)} == {
            "viewer",
            "operator",
            "orchestrator",
            "web",
        }


def test_orchestrator_api() -> None:
    for tag in ("submit", "resume", "cancel", "retry"):
        assert {r for r in ALL if roles.may_send(roles.ORCHESTRATOR_API, r, tag)} == {"operator", "web"}
    for tag in ("get_job", "list_jobs", "ping", "stats"):
        assert {r for r in ALL if roles.may_send(roles.ORCHESTRATOR_API, r, tag)} == {"viewer", "operator", "web"}


def test_who_may_connect_where() -> None:
    def connect(domain: str) -> set[str]:
        return {r for r in ALL if roles.may_connect(domain, r)}

    assert connect(roles.MASTER_AGENTS) == {"agent"}
    assert connect(roles.MASTER_CLIENTS) == {"viewer", "operator", "orchestrator", "web"}
    assert connect(roles.ORCHESTRATOR_API) == {"viewer", "operator", "web"}
    assert connect(roles.BROKER_PUBLISH) == {"agent", "master", "orchestrator"}
    assert connect(roles.BROKER_SUBSCRIBE) == ALL
    assert connect(roles.BROKER_REPLAY) == ALL
    assert connect("some-other-domain") == set()


def test_no_role_and_unknown_requests_are_refused() -> None:
    assert not roles.may_send(roles.MASTER_CLIENTS, None, "ping")
    assert not roles.may_connect(roles.BROKER_SUBSCRIBE, None)
    assert not roles.may_send(roles.MASTER_CLIENTS, "operator", "submit")
