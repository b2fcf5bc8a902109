"""Who is running what where: connection settings and the per-invocation command context."""

from __future__ import annotations

import os

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.errors import P4Error
from p4sim.output import Output
from p4sim.server.store import Store
from p4sim.view import ViewLine
from p4sim.workspace import Workspace

if TYPE_CHECKING:
    from collections.abc import Mapping

SIM_SCHEME = "sim:"


class Settings:
    def __init__(self, port: str, user: str, client: str, tickets: str, password: str | None, cwd: str, host: str):
        self.port, self.user, self.client, self.tickets = port, user, client, tickets
        self.password, self.cwd, self.host = password, cwd, host

    @property
    def server_root(self) -> str | None:
        """The server directory for `sim:/abs/dir`; None for any real (unreachable) server."""
        if self.port.startswith(SIM_SCHEME) and os.path.isabs(self.port[len(SIM_SCHEME) :]):
            return self.port[len(SIM_SCHEME) :]
        return None

    @classmethod
    def resolve(
        cls,
        env: Mapping[str, str],
        port: str | None = None,
        user: str | None = None,
        client: str | None = None,
        password: str | None = None,
        cwd: str | None = None,
        host: str | None = None,
    ) -> Settings:
        """Command-line flags beat P4CONFIG files, which beat the environment (as in p4)."""
        cwd = cwd or env.get("PWD") or os.getcwd()
        if not os.path.isdir(cwd):
            cwd = os.getcwd()
        values: dict[str, str] = {
            k: env[k] for k in ("P4PORT", "P4USER", "P4CLIENT", "P4PASSWD", "P4TICKETS") if k in env
        }
        if env.get("P4CONFIG"):
            values.update(_read_p4config(cwd, env["P4CONFIG"]))
        host = host or os.uname().nodename
        return cls(
            port=port or values.get("P4PORT") or "perforce:1666",
            user=user or values.get("P4USER") or env.get("USER") or env.get("LOGNAME") or "user",
            client=client or values.get("P4CLIENT") or host,
            tickets=values.get("P4TICKETS") or os.path.join(env.get("HOME", "/"), ".p4tickets"),
            password=password or values.get("P4PASSWD"),
            cwd=cwd,
            host=host,
        )


def _read_p4config(cwd: str, name: str) -> dict[str, str]:
    directory = cwd
    while True:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            with open(candidate) as f:
                pairs = (line.strip().split("=", 1) for line in f if "=" in line)
                return {k.strip(): v.strip() for k, v in pairs}
        parent = os.path.dirname(directory)
        if parent == directory:
            return {}
        directory = parent


class Context:
    """Everything a command needs: settings, the server store, the output collector."""

    def __init__(self, settings: Settings, store: Store, out: Output):
        self.settings = settings
        self.store = store
        self.out = out
        self.user = settings.user
        self._workspace: Workspace | None = None

    @property
    def workspace(self) -> Workspace:
        """The current client's workspace; a command needing one fails if it does not exist."""
        if self._workspace is None:
            self._workspace = self._load_workspace()
        return self._workspace

    def _load_workspace(self) -> Workspace:
        spec = self.store.spec("client", self.settings.client)
        if spec is None:
            raise P4Error(msg.CLIENT_UNKNOWN.format(name=self.settings.client))
        lines = [ViewLine.parse(line) for line in spec["view"].splitlines() if line.strip()]
        return Workspace(spec["name"], spec["root"], lines, self.settings.cwd)

    def pending_change(self, value: str | None) -> int:
        """Validate a `-c N` option (None or 'default' = the default change, 0)."""
        if value is None or value == "default":
            return 0
        if not value.isdigit():
            raise P4Error(msg.CHANGE_UNKNOWN.format(change=value))
        change = self.store.change(int(value))
        if change is None:
            raise P4Error(msg.CHANGE_UNKNOWN.format(change=value))
        if change["status"] == "submitted":
            raise P4Error(msg.CHANGE_COMMITTED.format(change=value))
        if change["client"] != self.settings.client:
            raise P4Error(msg.CHANGE_OTHER_CLIENT.format(change=value, client=change["client"]))
        return int(value)
