"""Every role against every server socket: ZAP admits a key only where its role may connect,
and each request type is checked against the role the keyring gives the key now (revoking
takes effect on a connection already open). Plus the start-up rules: no keys, no start;
``insecure = true`` named in the log."""

from __future__ import annotations

import subprocess
import sys

import pytest
import zmq

from common import keys, roles
from common import protocol as P
from common.auth import Security
from common.rpc import MasterClient, OrchestratorClient, RequestError
from tests.conftest import REPO, Stack, wait_for
from tests.integration.security_support import ask, handshake, log_events, raw_client

pytestmark = pytest.mark.timeout(120)

UNKNOWN_JOB = "INT-19700101-0001"
# One well-formed request per tag: none can do harm (unknown commands, jobs and agents).
SAMPLES: dict[str, P.Base] = {
    "exec": P.Exec(req_id="r", cmd_id="c-roles", spec=P.CmdSpec(argv=["true"]), agent="nobody"),
    "kill": P.Kill(req_id="r", cmd_id="c-none"),
    "query": P.Query(req_id="r", cmd_ids=["c-none"]),
    "fetch": P.Fetch(req_id="r", cmd_id="c-none", stream=P.STDOUT, offset=0, size=10),
    "agents": P.ListAgents(req_id="r"),
    "ping": P.Ping(req_id="r"),
    "stats": P.Stats(req_id="r"),
    "submit": P.Submit(req_id="r", workspace="no-such-workspace", source="//a/...", target="//b/..."),
    "get_job": P.GetJob(req_id="r", job_id=UNKNOWN_JOB),
    "list_jobs": P.ListJobs(req_id="r"),
    "resume": P.Resume(req_id="r", job_id=UNKNOWN_JOB),
    "cancel": P.Cancel(req_id="r", job_id=UNKNOWN_JOB),
    "retry": P.RetryJob(req_id="r", job_id=UNKNOWN_JOB),
    "cleanup": P.CleanupJob(req_id="r", job_id=UNKNOWN_JOB),
    "approve": P.Approve(req_id="r", job_id=UNKNOWN_JOB),
    "replay": P.Replay(req_id="r", limit=1),
    "put_template": P.PutTemplate(req_id="r", template=P.Template(name="t", workspace="no-such-workspace")),
    "get_template": P.GetTemplate(req_id="r", name="none"),
    "list_templates": P.ListTemplates(req_id="r"),
    "remove_template": P.RemoveTemplate(req_id="r", name="none"),
    "put_schedule": P.PutSchedule(req_id="r", schedule=P.Schedule(name="s", template="none", cron="0 2 * * *")),
    "list_schedules": P.ListSchedules(req_id="r"),
    "remove_schedule": P.RemoveSchedule(req_id="r", name="none"),
}
# ROUTER endpoints: (config name, domain, server role).
ROUTERS = [
    ("master_clients", roles.MASTER_CLIENTS, roles.MASTER),
    ("orchestrator_api", roles.ORCHESTRATOR_API, roles.ORCHESTRATOR),
    ("broker_replay", roles.BROKER_REPLAY, roles.BROKER),
    ("master_agents", roles.MASTER_AGENTS, roles.MASTER),
]
# The broker's event sockets: (config name, domain, the client socket type).
EVENT_SOCKETS = [("broker_xsub", roles.BROKER_PUBLISH, zmq.PUB), ("broker_xpub", roles.BROKER_SUBSCRIBE, zmq.SUB)]


@pytest.fixture
def core(stack: Stack) -> Stack:
    for service in ("broker", "master", "orchestrator"):
        stack.start(service)
    stack.wait_ready()
    return stack


def _key_of_role(stack: Stack, role: str) -> Security:
    """A key k-ROLE; one of a server role answers elsewhere, so clients still pin the real server."""
    cfg = stack.config()
    pair = keys.create(cfg.keys_path, f"k-{role}")
    elsewhere = ["tcp://elsewhere.invalid:1"] if role in roles.SERVER_ROLES else []
    keys.authorize(cfg.keyring_path, pair.name, role, pair.public.decode(), elsewhere)
    return Security(pair, keys.Keyring(cfg.keyring_path))


def test_every_role_on_every_socket_and_every_request(core: Stack) -> None:
    checked = 0
    for role in roles.ROLES:
        security = _key_of_role(core, role)
        for name, domain, server in ROUTERS:
            with raw_client(core.endpoint(name), security, server) as (sock, monitor):
                outcome = handshake(sock, monitor)
                if not roles.may_connect(domain, role):
                    assert outcome == zmq.EVENT_HANDSHAKE_FAILED_AUTH, (role, domain)
                    continue
                assert outcome == zmq.EVENT_HANDSHAKE_SUCCEEDED, (role, domain)
                for tag in roles.REQUESTS[domain]:
                    if tag not in SAMPLES:
                        # Only the agents' side goes without a sample: HELLO binding is
                        # test_security_attacks'. A new client request needs one here.
                        assert domain == roles.MASTER_AGENTS, f"no sample of {tag!r} for {domain}"
                        continue
                    reply = ask(sock, SAMPLES[tag])
                    refused = isinstance(reply, P.ErrorReply) and reply.code == "forbidden"
                    assert refused != roles.may_send(domain, role, tag), (role, domain, tag, reply)
                    if refused:
                        assert isinstance(reply, P.ErrorReply)
                        assert reply.message == f"key k-{role} (role {role}) may not send {tag}"
                    checked += 1
        for name, domain, kind in EVENT_SOCKETS:
            with raw_client(core.endpoint(name), security, roles.BROKER, kind) as (sock, monitor):
                outcome = handshake(sock, monitor)
                want = (
                    zmq.EVENT_HANDSHAKE_SUCCEEDED
                    if roles.may_connect(domain, role)
                    else zmq.EVENT_HANDSHAKE_FAILED_AUTH
                )
                assert outcome == want, (role, domain)
    assert checked > 50  # the table was walked, not skipped


def test_revoking_a_key_cuts_an_open_connection_and_refuses_new_ones(core: Stack) -> None:
    ring = core.config().keyring_path
    ops = core.security("op-2", roles.OPERATOR)
    with OrchestratorClient([core.endpoint("orchestrator_api")], ops, timeout=5.0) as oc:
        assert oc.ping().source
        gone = keys.revoke(ring, "op-2")
        assert gone.role == roles.OPERATOR
        with pytest.raises(RequestError) as err:
            oc.ping()  # the same connection, still open
        assert err.value.code == "forbidden"
        assert err.value.message == "key op-2 (role none: not in the keyring) may not send ping"
    with raw_client(core.endpoint("orchestrator_api"), ops, roles.ORCHESTRATOR) as (sock, monitor):
        assert handshake(sock, monitor) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    # Authorized again (as a viewer now): without a restart either.
    keys.authorize(ring, "op-2", roles.VIEWER, ops.pair.public.decode())
    with OrchestratorClient([core.endpoint("orchestrator_api")], ops, timeout=5.0) as oc:
        assert oc.ping().source
        with pytest.raises(RequestError) as err:
            oc.cancel(UNKNOWN_JOB)
        assert err.value.code == "forbidden"


def test_a_service_without_keys_refuses_to_start_with_one_line(stack: Stack) -> None:
    config = stack.config_file()  # no start yet: no keys were made
    done = subprocess.run(
        [sys.executable, "-m", "p4bus", "--config", str(config), "master"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "no key pair" in line and "master.key_secret" in line and "p4bus keys init" in line


def test_insecure_is_named_in_every_services_start_up_log(stack: Stack) -> None:
    stack.tree["insecure"] = True
    for service in ("broker", "master", "orchestrator"):
        stack.start(service)
    stack.start("agent", name="a1", extra={"agent": {"id": "a1"}})
    stack.wait_ready(ids=["a1"])
    assert not (stack.tmp / "state" / "keys").exists()  # an insecure stack makes no keys
    for name in ("broker", "master", "orchestrator", "a1"):
        path = stack.proc(name).log_path
        wait_for(lambda p=path: log_events(p, "insecure"), 10, f"{name}'s insecure warning")
    with MasterClient([stack.endpoint("master_clients")], None, timeout=5.0) as mc:
        assert [a.agent_id for a in mc.agents()] == ["a1"]
