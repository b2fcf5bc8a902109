"""Configuration: defaults < TOML file (--config or P4BUS_CONFIG) < P4BUS_* environment < CLI flags.

Environment names: ``P4BUS_<FIELD>`` for top-level fields (``P4BUS_PORT_BASE``) and
``P4BUS_<SECTION>_<FIELD>`` for section fields (``P4BUS_AGENT_SLOTS``). Lists are
comma-separated; dicts and lists may also be given as JSON.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from common import ids
from common.limits import MAX_CAPTURE_BYTES, MAX_CHUNK_BYTES

ENV_PREFIX = "P4BUS_"
CONFIG_ENV = "P4BUS_CONFIG"
# The CLI's key pair (a .key_secret file); not a setting, so not read by env_overrides.
KEY_ENV = "P4BUS_KEY"
# Test-only hooks a service reads itself (e.g. orchestrator/service.py's SelfKill): not settings.
TEST_ENV_PREFIX = "P4BUS_TEST_"
DEFAULT_PORT_BASE = 9090
# Every publisher's beacon interval (common/publisher.py): how soon a subscriber that lost the
# tail of a publisher's events learns it. 0 turns beacons off.
DEFAULT_BEACON_S = 2.0
BeaconSeconds = Annotated[float, msgspec.Meta(ge=0)]

# Offsets from port_base; every endpoint can also be set on its own.
PORT_OFFSETS = {
    "master_agents": 0,
    "master_clients": 1,
    "broker_xsub": 2,
    "broker_xpub": 3,
    "broker_replay": 4,
    "orchestrator_api": 5,
}
# The dashboard's HTTP port ([web] bind), the one after the bus's six.
WEB_PORT_OFFSET = 6
# Each service's Prometheus metrics and health endpoint (common/metrics.py), after the dashboard;
# ``[SERVICE] metrics`` sets one ("http://HOST:PORT/", or "off").
METRICS_PORT_OFFSETS = {"broker": 7, "master": 8, "orchestrator": 9, "agent": 10, "web": 11, "notify": 12}
METRICS_OFF = ("off", "0")


class ConfigError(ValueError):
    """A configuration problem a person must fix; the message says what, where and how."""


DEFAULT_ENV_ALLOWLIST = (
    "P4PORT",
    "P4USER",
    "P4CLIENT",
    "P4TICKETS",
    "P4CONFIG",
    "P4CHARSET",
    "P4TRUST",
    "PWD",
    "LANG",
    "LC_ALL",
    "TZ",
)


class BrokerConf(msgspec.Struct, forbid_unknown_fields=True):
    journal: str = ""  # default: <state_dir>/journal.db
    journal_max_age_s: float = 7 * 24 * 3600
    journal_max_bytes: int = 2 << 30
    prune_interval_s: float = 60.0
    # Prometheus metrics and /health: "http://HOST:PORT/"; default: <host>:<port_base + 7>; "off".
    metrics: str = ""


class BrokerEndpoints(msgspec.Struct, forbid_unknown_fields=True):
    """One of several brokers (``[[brokers]]``): where its publishers, subscribers and replay
    clients connect. Every publisher sends each event to each broker; every subscriber reads
    all of them and drops the copies (docs/design.md, "Replicated brokers")."""

    xsub: str
    xpub: str
    replay: str


class MasterConf(msgspec.Struct, forbid_unknown_fields=True):
    id: str = ""
    heartbeat_s: float = 1.0
    # Clients waiting for an agent's reply give up after this long.
    request_timeout_s: float = 10.0
    beacon_s: BeaconSeconds = DEFAULT_BEACON_S
    # No exec goes to an agent with less free spool space than this (what it reports).
    min_spool_free_mb: Annotated[float, msgspec.Meta(ge=0)] = 64.0
    # Prometheus metrics and /health: "http://HOST:PORT/"; default: <host>:<port_base + 8>; "off".
    metrics: str = ""


class AgentWorkspace(msgspec.Struct, forbid_unknown_fields=True):
    """A workspace this agent holds (``[agent.workspaces.NAME]``): its root, and the p4
    environment every command in it gets from here, never from the request (agent/policy.py)."""

    root: str
    p4port: str = ""
    p4user: str = ""
    p4client: str = ""
    tickets: str = ""  # P4TICKETS
    trust: str = ""  # P4TRUST


class AgentConf(msgspec.Struct, forbid_unknown_fields=True):
    id: str = ""
    masters: list[str] = []  # default: [master_agents]
    broker: str = ""  # default: broker_xsub
    # Several brokers' XSUB endpoints, each sent every event; default: [broker] if set, else
    # the xsub of every broker the top-level ``brokers`` names.
    brokers: list[str] = []
    pools: list[str] = msgspec.field(default_factory=lambda: ["default"])
    labels: dict[str, str] = {}
    slots: int = 4
    # name -> root directory, or a table (AgentWorkspace) with the p4 settings too; every
    # root is also an allowed cwd root
    workspaces: dict[str, str | AgentWorkspace] = {}
    workspace_roots: list[str] = []
    # executable basenames or absolute paths; "*" allows any (development stacks only)
    allowed_executables: list[str] = msgspec.field(default_factory=lambda: ["p4", "p4sim"])
    env_allowlist: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ENV_ALLOWLIST))
    spool_dir: str = ""  # default: <state_dir>/spool/<agent id>
    spool_max_age_s: float = 7 * 24 * 3600
    heartbeat_s: float = 1.0
    beacon_s: BeaconSeconds = DEFAULT_BEACON_S
    kill_grace_s: float = 5.0
    # What a clean stop (SIGTERM, SIGINT) does with running commands: "kill" ends them (TERM,
    # then KILL after kill_grace_s) and records them killed; "detach" leaves them to their
    # keepers, so that the agent started next (an upgrade, a unit restart) re-attaches to them
    # and reports their real ends, as after a crash.
    on_stop: Literal["kill", "detach"] = "kill"
    # Bounded so that every event the agent publishes fits the broker's event size limit.
    capture_bytes: Annotated[int, msgspec.Meta(ge=2, le=MAX_CAPTURE_BYTES)] = 64 * 1024
    chunk_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_BYTES)] = 256 * 1024
    flush_ms: float = 5.0
    # "ssh://[user@]host[:port]": run commands on that host over one reused SSH connection
    # instead of locally (agent/ssh_exec.py); workspace roots and executables are remote paths.
    exec_via: str = ""
    # ssh(1) -o options for exec_via (ssh_config syntax), e.g. ["IdentityFile=/path/key", "ProxyJump=bastion"].
    ssh_options: list[str] = []
    # Prometheus metrics and /health: "http://HOST:PORT/"; default: <host>:<port_base + 10>; "off".
    metrics: str = ""

    def workspace(self, name: str | None) -> AgentWorkspace | None:
        """The named workspace as a table (the plain ``name = "root"`` form has no p4 settings)."""
        held = self.workspaces.get(name) if name else None
        return AgentWorkspace(root=held) if isinstance(held, str) else held

    def workspace_tables(self) -> dict[str, AgentWorkspace]:
        return {name: ws for name in self.workspaces if (ws := self.workspace(name)) is not None}


class WorkspaceConf(msgspec.Struct, forbid_unknown_fields=True):
    p4port: str
    p4user: str
    p4client: str
    root: str
    agent: str | None = None
    pool: str | None = None
    p4: str = "p4"
    # Where the password comes from: the name of an environment variable of the orchestrator
    # or a file (0600). Never the password itself in the config.
    password_env: str | None = None
    password_file: str | None = None
    tickets_file: str | None = None
    env: dict[str, str] = {}
    # Depot path patterns no job in this workspace may submit, checked with the site's.
    blocklist: list[str] = []
    # Revert and delete a FAILED job's pending change (and shelf) at once, through the agent,
    # so the next job finds the workspace clean (default: leave it for a person to look at).
    cleanup_on_failure: bool = False
    # Stop before submitting, after the shelf is final (SHELVE, NC_FIX), until `p4bus approve`.
    review_before_submit: bool = False


def read_password_file(path: str) -> str:
    """The password in ``path`` (its last newline removed), or ConfigError in one line: the file
    must be a regular file owned by this process's user and readable by nobody else."""
    try:
        fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"password_file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # the file we read, not what the path names a moment later
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"password_file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ConfigError(
                f"password_file {path} is owned by uid {st.st_uid}, not by this service's user "
                f"(uid {os.geteuid()}): chown it"
            )
        if st.st_mode & 0o077:
            raise ConfigError(
                f"password_file {path} has mode {stat.S_IMODE(st.st_mode):04o}; others may read it: chmod 600 {path}"
            )
        return f.read().decode().rstrip("\n")


class OrchestratorConf(msgspec.Struct, forbid_unknown_fields=True):
    # A SQLite file (default: <state_dir>/jobs.db) or a PostgreSQL DSN, postgresql://USER@HOST:PORT/DB
    # (never with the password: that is in store_password_file, 0600, or libpq's PGPASSFILE).
    store: str = ""
    store_password_file: str = ""
    masters: list[str] = []  # default: [master_clients]
    workspaces: dict[str, WorkspaceConf] = {}
    recheck_interval_s: float = 0.0  # auto re-check of WAITING_RESOLVE jobs; 0 = off
    reconcile_after_s: float = 5.0
    # An agent that no master can reach for this long: its in-flight commands are UNKNOWN (they
    # may still be running there) until it answers or their stage's deadline passes.
    lost_after_s: float = 5.0
    # How long a command may stay UNKNOWN before its job gives up on it: it is LOST and its
    # stage's on_lost policy applies (retry, after checking its effect; or fail). A stage's
    # own value: site.retry.STAGE.unknown_deadline_s.
    unknown_deadline_s: float = 600.0
    # A command every reply refuses (no agent fits, busy, a spool that fails) for this long
    # fails its stage with the last refusal's reason. Nobody answering at all does not count.
    dispatch_refused_deadline_s: float = 600.0
    beacon_s: BeaconSeconds = DEFAULT_BEACON_S
    site: dict[str, Any] = {}  # pre_submit, blocklist, name_check, push, retry
    # Finished jobs (DONE, NOTHING_TO_DO, FAILED, CANCELLED) unchanged for this long are removed
    # from the store; their events stay in the broker's journal. 0 keeps them forever.
    job_retention_s: Annotated[float, msgspec.Meta(ge=0)] = 90 * 24 * 3600
    # How often the store is pruned (finished jobs past retention, handled-event records).
    prune_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    # Prometheus metrics and /health: "http://HOST:PORT/"; default: <host>:<port_base + 9>; "off".
    metrics: str = ""


class SecurityConf(msgspec.Struct, forbid_unknown_fields=True):
    keys_dir: str = ""  # default: <state_dir>/keys
    # This process's key name; default: the service's name (an agent's: its id; the CLI's: operator).
    key: str = ""
    keyring: str = ""  # default: <keys_dir>/keyring.toml


class WebConf(msgspec.Struct, forbid_unknown_fields=True):
    """`p4bus web`, the dashboard (p4bus/web/, docs/operations.md "The web dashboard")."""

    bind: str = ""  # host:port; default: <host>:<port_base + 6> (127.0.0.1:9096)
    url: str = ""  # how people reach it (links in pages and notifications); default: http://<bind>/
    tokens_file: str = ""  # default: <state_dir>/web-tokens.json (0600; tokens stored hashed)
    # Single sign-on by a reverse proxy: the header naming the person, accepted only from these
    # addresses, and the role of each person it may name (anyone else is refused).
    trusted_header: str = ""
    trusted_proxies: list[str] = []
    users: dict[str, str] = {}
    session_ttl_s: float = 12 * 3600
    # Set when people reach the dashboard over https (a proxy terminating TLS): the cookie is then
    # never sent in clear.
    cookie_secure: bool = False
    # Prometheus metrics and /health: "http://HOST:PORT/"; default: <host>:<port_base + 11>; "off".
    metrics: str = ""


# ---- notifications (p4bus/notify): who is told what, how
NotifyEvent = Literal["waiting", "failed", "done", "cancelled"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("waiting", "failed", "done", "cancelled")


class NotifyReceiver(msgspec.Struct, forbid_unknown_fields=True):
    """One destination (``[notify.receivers.NAME]``): a webhook (generic JSON or Slack's
    incoming-webhook format) or a mailbox reached over SMTP with STARTTLS."""

    kind: Literal["webhook", "slack", "email"]
    url: str = ""  # webhook, slack: http(s)://...
    # Or the URL in a file (0600, like a password file): a Slack webhook's URL is its secret.
    url_file: str = ""
    smtp_host: str = ""  # email
    smtp_port: int = 587
    # The CA file the SMTP server's certificate must verify against; default: the system's CAs.
    ca_file: str = ""
    username: str = ""  # SMTP login; with it, password_file (0600)
    password_file: str = ""
    sender: str = ""
    to: list[str] = []
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class NotifyRule(msgspec.Struct, forbid_unknown_fields=True):
    """Send ``events`` of jobs in ``workspaces`` (fnmatch patterns) to ``receivers``."""

    receivers: list[str]
    workspaces: list[str] = msgspec.field(default_factory=lambda: ["*"])
    events: list[NotifyEvent] = msgspec.field(default_factory=lambda: list(NOTIFY_EVENTS))


class NotifyConf(msgspec.Struct, forbid_unknown_fields=True):
    # The dashboard's address for the links (<web_url>/jobs/<id>); default http://<host>:<port_base + 6>.
    web_url: str = ""
    state: str = ""  # the outbox and journal cursor (SQLite, 0600); default <state_dir>/notify.db
    receivers: dict[str, NotifyReceiver] = {}
    rules: list[NotifyRule] = []
    # A receiver that fails is retried after retry_initial_s, doubling up to retry_max_s.
    retry_initial_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    retry_max_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # Delivered notifications are kept this long in the outbox (for the record), then pruned.
    keep_sent_s: float = 7 * 24 * 3600
    # Prometheus metrics and /health: "http://HOST:PORT/"; default: <host>:<port_base + 12>; "off".
    metrics: str = ""


class Config(msgspec.Struct, forbid_unknown_fields=True):
    state_dir: str = "~/.p4bus"
    host: str = "127.0.0.1"
    port_base: int = DEFAULT_PORT_BASE
    master_agents: str = ""
    master_clients: str = ""
    broker_xsub: str = ""
    broker_xpub: str = ""
    broker_replay: str = ""
    orchestrator_api: str = ""
    # Several brokers (replicated: each gets every event); default: the one broker_* name.
    brokers: list[BrokerEndpoints] = []
    # Every orchestrator's API, for clients (CLI, web, tail): one is active, the others are
    # standbys (docs/operations.md, "Standby orchestrators"); default: [orchestrator_api].
    # Each orchestrator process binds its own orchestrator_api.
    orchestrators: list[str] = []
    log_level: str = "info"
    insecure: bool = False
    broker: BrokerConf = msgspec.field(default_factory=BrokerConf)
    master: MasterConf = msgspec.field(default_factory=MasterConf)
    agent: AgentConf = msgspec.field(default_factory=AgentConf)
    orchestrator: OrchestratorConf = msgspec.field(default_factory=OrchestratorConf)
    security: SecurityConf = msgspec.field(default_factory=SecurityConf)
    web: WebConf = msgspec.field(default_factory=WebConf)
    notify: NotifyConf = msgspec.field(default_factory=NotifyConf)

    # ---- derived values (never stored, so a port_base change moves every endpoint)
    def endpoint(self, name: str) -> str:
        explicit = getattr(self, name)
        if explicit:
            return explicit
        return f"tcp://{self.host}:{self.port_base + PORT_OFFSETS[name]}"

    @property
    def state_path(self) -> Path:
        return Path(os.path.expanduser(self.state_dir))

    @property
    def keys_path(self) -> Path:
        return Path(os.path.expanduser(self.security.keys_dir)) if self.security.keys_dir else self.state_path / "keys"

    @property
    def keyring_path(self) -> Path:
        return (
            Path(os.path.expanduser(self.security.keyring))
            if self.security.keyring
            else self.keys_path / "keyring.toml"
        )

    def web_bind(self) -> tuple[str, int]:
        """(host, port) the dashboard listens on: ``[web] bind``, else the port after the bus's six."""
        if not self.web.bind:
            return self.host, self.port_base + WEB_PORT_OFFSET
        host, sep, port = self.web.bind.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"web.bind {self.web.bind!r} is not HOST:PORT (e.g. 127.0.0.1:9096)")
        return host.strip("[]"), int(port)

    def web_url(self) -> str:
        """The dashboard's address for people, ending in /."""
        if self.web.url:
            return self.web.url.rstrip("/") + "/"
        host, port = self.web_bind()
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    @property
    def web_tokens_path(self) -> Path:
        return (
            Path(os.path.expanduser(self.web.tokens_file))
            if self.web.tokens_file
            else self.state_path / "web-tokens.json"
        )

    def metrics_url(self, service: str) -> str | None:
        """Where ``service`` serves its metrics and health: ``[service] metrics``, else the port
        METRICS_PORT_OFFSETS gives it on ``host``; None when it is "off"."""
        explicit = str(getattr(self, service).metrics).strip()
        if explicit.lower() in METRICS_OFF:
            return None
        if explicit:
            return explicit
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port_base + METRICS_PORT_OFFSETS[service]}/"

    def agent_id(self) -> str:
        return self.agent.id or ids.host_id()

    def agent_masters(self) -> list[str]:
        return self.agent.masters or [self.endpoint("master_agents")]

    def bus_brokers(self) -> list[BrokerEndpoints]:
        """Every broker of the bus: ``brokers``, else the one broker_* (or port_base) names."""
        return self.brokers or [
            BrokerEndpoints(self.endpoint("broker_xsub"), self.endpoint("broker_xpub"), self.endpoint("broker_replay"))
        ]

    def broker_xsubs(self) -> list[str]:
        """Where a service's publisher connects (each gets every event)."""
        return [b.xsub for b in self.bus_brokers()]

    def broker_xpubs(self) -> list[str]:
        return [b.xpub for b in self.bus_brokers()]

    def broker_replays(self) -> list[str]:
        return [b.replay for b in self.bus_brokers()]

    def agent_brokers(self) -> list[str]:
        if self.agent.brokers:
            return self.agent.brokers
        return [self.agent.broker] if self.agent.broker else self.broker_xsubs()

    def client_masters(self) -> list[str]:
        return self.orchestrator.masters or [self.endpoint("master_clients")]

    def client_orchestrators(self) -> list[str]:
        return self.orchestrators or [self.endpoint("orchestrator_api")]

    def notify_web_url(self) -> str:
        # The dashboard's own address ([web] url, else its bind) unless [notify] names another.
        return (self.notify.web_url or self.web_url()).rstrip("/")

    def notify_state_path(self) -> Path:
        return Path(os.path.expanduser(self.notify.state)) if self.notify.state else self.state_path / "notify.db"


_SECTIONS = {"broker", "master", "agent", "orchestrator", "security", "notify", "web"}


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _env_value(raw: str, target_type: Any) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    origin = getattr(target_type, "__origin__", None)
    if origin is list or target_type is list:
        return [p.strip() for p in text.split(",") if p.strip()]
    if origin is dict:
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        return {k.strip(): v.strip() for k, v in pairs}
    return text


def _fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(struct)}


def env_overrides(environ: Mapping[str, str]) -> dict:
    """Translate P4BUS_* variables into a nested dict; unknown names are an error."""
    out: dict = {}
    top = _fields(Config)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, KEY_ENV) or name.startswith(TEST_ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in top and key not in _SECTIONS:
            _set_path(out, [key], _env_value(raw, top[key]))
            continue
        section, _, field = key.partition("_")
        if section in _SECTIONS:
            sec_fields = _fields(type(getattr(Config(), section)))
            if field in sec_fields:
                _set_path(out, [section, field], _env_value(raw, sec_fields[field]))
                continue
        raise ConfigError(
            f"environment variable {name} is not a p4bus setting "
            f"(known: P4BUS_<FIELD> or P4BUS_<SECTION>_<FIELD>, see docs/operations.md)"
        )
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, table by table; neither is changed.

    An agent's ``labels`` are replaced whole, not merged: a layer that names the labels
    names all of them, so a label set in the file can be taken away by the environment.
    """
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        if isinstance(v, Mapping) and isinstance(old, Mapping) and k != "labels":
            out[k] = deep_merge(old, v)
        else:
            out[k] = v
    return out


def _config_path(path: str | os.PathLike | None, environ: Mapping[str, str]) -> Path | None:
    chosen = path or environ.get(CONFIG_ENV) or None
    return Path(chosen).expanduser() if chosen else None


def read_tree(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The layered settings before validation: TOML file < P4BUS_* environment < overrides."""
    environ = os.environ if environ is None else environ
    p = _config_path(path, environ)
    tree: dict[str, Any] = {}
    if p is not None:
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (set --config or {CONFIG_ENV} to an existing TOML file)")
        try:
            tree = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    tree = deep_merge(tree, env_overrides(environ))
    return deep_merge(tree, {k: v for k, v in (overrides or {}).items() if v is not None})


def from_tree(tree: Mapping[str, Any], source: str = "settings") -> Config:
    """Validate a settings tree; ``source`` names where it came from in the error."""
    try:
        return msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration ({source}): {exc}") from None


def load(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration; raise ConfigError naming the file/variable at fault."""
    environ = os.environ if environ is None else environ
    p = _config_path(path, environ)
    tree = read_tree(p, overrides, environ)
    return from_tree(tree, f"{p or 'defaults'} + environment + flags")


def flag_overrides(**flags: Any) -> dict:
    """CLI flags given as section__field=value (None = not given) -> nested override dict."""
    out: dict = {}
    for k, v in flags.items():
        if v is None or v == () or v == []:
            continue
        _set_path(out, k.split("__"), list(v) if isinstance(v, tuple) else v)
    return out
