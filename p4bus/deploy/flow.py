"""Deploy (install, or upgrade in place) and remove: the steps of the other modules, in order.

``security`` is this side's (the operator's key and the bus keyring): it confirms the
registration and authorizes the agent's key; None when the bus runs ``insecure``, and then the
agent does too."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from common.auth import Security
from common.ssh import SshDest
from p4bus.deploy import DeployError, Plan, Say, agent_keys, install, registration, service, wheelhouse
from p4bus.deploy.host import Remote, abs_dir, check_python, probe


def deploy(plan: Plan, security: Security | None, say: Say) -> str:
    """Install (or upgrade in place) and start the agent; returns its id once registered."""
    clients = plan.master_clients or registration.clients_endpoint(plan.masters[0])
    registration.check_master(clients, security)
    with (
        tempfile.TemporaryDirectory(prefix="p4bus-deploy-") as tmp,
        Remote(plan.dest, plan.ssh_options, Path(tmp)) as remote,
    ):
        host = probe(remote, plan.python)
        check_python(host, plan.python, plan.dest)
        agent_id = plan.agent_id or host.node
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", agent_id):
            raise DeployError(f"agent id {agent_id!r} must be 1-64 letters, digits, '_', '.' or '-'; pass --agent-id")
        rdir = abs_dir(plan.remote_dir, host.home)
        if plan.wheelhouse is not None:
            wheels = wheelhouse.given(plan.wheelhouse)
        else:
            t0 = time.monotonic()
            wheels = wheelhouse.build(Path(tmp) / "wheels", host)
            say(f"built {len(wheels)} wheels in {time.monotonic() - t0:.1f}s")
        old = registration.registered(clients, security, agent_id)
        install.prepare(remote, rdir)
        service.stop(remote, rdir, "stopping the old agent")
        if old is not None:
            say(f"stopped agent {agent_id} (upgrade)")
        install.install(remote, host, rdir, wheels, install.agent_toml(plan, agent_id, rdir, security is None))
        if security is not None and agent_keys.provision(remote, rdir, agent_id, security):
            say(f"authorized the key made on {plan.dest.host} as agent {agent_id}")
        service.start(remote, rdir, agent_id, host.systemd)
        how = "systemd user unit" if host.systemd else "supervised background process"
        say(f"installed in {plan.dest.host}:{rdir}, started as a {how}; waiting for it to register")
        if (
            registration.wait_registered(clients, security, agent_id, old.epoch if old else "", plan.register_timeout)
            is None
        ):
            tail = remote.sh(f"tail -n 3 {rdir}/agent.log 2>/dev/null || true", "reading the agent log").strip()
            last = tail.splitlines()[-1] if tail else "(empty)"
            raise DeployError(
                f"agent {agent_id} started on {plan.dest.host} but did not register with {clients} within "
                f"{plan.register_timeout:.0f}s: check that {plan.dest.host} can reach {', '.join(plan.masters)} "
                f"and {plan.broker} (log {rdir}/agent.log: {last})"
            )
    return agent_id


def remove(
    dest: SshDest, ssh_options: list[str], remote_dir: str, clients: str | None, security: Security | None, say: Say
) -> str:
    """Stop and delete the agent in ``remote_dir``; returns its id ('' if none was there)."""
    with tempfile.TemporaryDirectory(prefix="p4bus-deploy-") as tmp, Remote(dest, ssh_options, Path(tmp)) as remote:
        home = remote.sh('echo "$HOME"', "probing").strip()
        d = abs_dir(remote_dir, home)
        agent_id = remote.sh(
            f"sed -n 's/^id = \"\\(.*\\)\"$/\\1/p' {d}/agent.toml 2>/dev/null || true", "reading the agent config"
        ).strip()
        service.stop(remote, d, "stopping the agent")
        remote.sh(f"rm -rf {d}", "removing the agent")
    if agent_id and clients and not registration.wait_dropped(clients, security, agent_id, service.STOP_WAIT_S):
        raise DeployError(f"agent {agent_id} was removed from {dest.host} but {clients} still lists it")
    say(f"removed agent {agent_id or '(none found)'} from {dest.host}:{remote_dir}")
    return agent_id
