"""The p4bus wire protocol: every message that crosses a socket, and the only codec.

Nothing else in the code base encodes or decodes frames. Messages are msgspec Structs in
tagged unions (tag field ``t``), encoded as msgpack maps with field names, so a subscriber in
any language needs only a msgpack decoder (docs/protocol.md is the human-readable spec).

Frame layouts
- request/reply sockets (agent DEALER <-> master ROUTER, client DEALER <-> orchestrator/
  replay ROUTER): one frame, a msgpack map; ROUTERs see ``[identity, frame]``.
- events: a publisher (PUB -> broker XSUB) sends two frames ``[topic, body]``; the topic is
  UTF-8 text and also appears inside the body, so a journalled body is self-describing. The
  broker (XPUB -> SUB) adds a third, ``[topic, body, publisher]``: the name of the key that
  authenticated the publisher's connection ("" on an insecure bus). The body is the
  publisher's word; the third frame is the broker's.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast, get_args

import msgspec

from common import limits

PROTOCOL_VERSION = 1

STDOUT = 1
STDERR = 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}


class Base(msgspec.Struct, tag_field="t", omit_defaults=True, forbid_unknown_fields=False):
    """Common base: every message carries its type name in ``t``."""


# --------------------------------------------------------------------------- shared shapes


class CmdSpec(msgspec.Struct, omit_defaults=True):
    """What an agent runs: an argv list (never a shell string)."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = {}
    stdin: bytes | None = None
    # A secret stdin (a password for `p4 login`) is never written to the spool or logged.
    stdin_secret: bool = False
    timeout: float | None = None


class CmdStatus(msgspec.Struct, omit_defaults=True):
    """Everything known about one command: the spool's answer and the DONE event's payload."""

    cmd_id: str
    job_id: str = ""
    agent: str = ""
    # unknown: this agent has no such command; running; done
    state: Literal["unknown", "running", "done"] = "unknown"
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    killed: bool = False
    error: str = ""  # could not start (not allowlisted, bad cwd, exec failure)
    started_at: float = 0.0
    ended_at: float = 0.0
    duration: float = 0.0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    # Bounded captures (head and tail of each stream) for interpreters; full output is in the spool.
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False
    # Output that could not be spooled whole (a full disk): why, and how much was dropped.
    spool_error: str = ""


class AgentInfo(msgspec.Struct, omit_defaults=True):
    agent_id: str
    host: str = ""
    pools: list[str] = []
    labels: dict[str, str] = {}
    workspaces: list[str] = []
    slots: int = 1
    running: list[str] = []
    epoch: str = ""
    last_seen: float = 0.0
    alive: bool = True
    # Bytes free for its spool (None: not reported); below the master's threshold it gets no work.
    spool_free: int | None = None


# --------------------------------------------------------------------------- agent <-> master


class Hello(Base, tag="hello"):
    """Agent -> master on connect and whenever told to re-register."""

    proto: int
    agent: AgentInfo
    heartbeat_s: float
    # Commands that finished since the agent's spool was last asked; lets a restarted master
    # (or the orchestrator, via agent.up events) reconcile without waiting.
    recent_done: list[str] = []


class Welcome(Base, tag="welcome"):
    master_id: str
    heartbeat_s: float


class Heartbeat(Base, tag="hb"):
    """Both ways. Any message counts as a sign of life; this one is sent when idle."""

    running: list[str] = []
    free_slots: int = 0
    spool_free: int | None = None  # as AgentInfo.spool_free, refreshed


class Reregister(Base, tag="rereg"):
    """Master -> agent it does not know (e.g. after a master restart)."""

    reason: str = ""


class Bye(Base, tag="bye"):
    """Agent -> master on clean shutdown, so it is not reported lost."""

    agent_id: str


# --------------------------------------------------------------------------- replies


class ExecReply(Base, tag="exec_r"):
    req_id: str
    cmd_id: str
    agent: str
    status: CmdStatus
    duplicate: bool = False  # the cmd_id was known already: nothing new was started


class KillReply(Base, tag="kill_r"):
    req_id: str
    cmd_id: str
    found: bool
    status: CmdStatus | None = None


class QueryReply(Base, tag="query_r"):
    req_id: str
    statuses: list[CmdStatus]


class FetchReply(Base, tag="fetch_r"):
    req_id: str
    cmd_id: str
    stream: int
    offset: int
    data: bytes
    total: int  # bytes in the spool for that stream so far
    # The command has finished and data reaches the end of the stream: nothing more to read.
    # (An agent returns at most limits.MAX_FETCH_BYTES per reply, so a finished command's read
    # may be incomplete.)
    complete: bool


class AgentList(Base, tag="agents_r"):
    req_id: str
    agents: list[AgentInfo]


class Pong(Base, tag="pong"):
    req_id: str
    source: str = ""
    # An orchestrator's: "active" (acts on jobs) or "standby" (answers reads, waits for the
    # lease: orchestrator/standby.py); "" from every other service.
    role: str = ""


class ErrorReply(Base, tag="error"):
    """``code`` is one of: bad_frame (undecodable, not a message, wrong frame count),
    unknown_type, bad_request (decodable but invalid), no_agent (no live agent fits a dispatch),
    agent_unreachable, agent_busy, unknown_cmd, unknown_job, timeout, standby, internal. A plain str on
    the wire, so a newer peer's code does not make the reply undecodable."""

    req_id: str
    code: str
    message: str


# --------------------------------------------------------------------------- requests (clients -> master -> agent)
# The same request types travel client -> master and master -> agent: the master resolves
# ``agent``/``pool`` and forwards with its own req_id.

R = TypeVar("R", bound=Base)


class Request(Base, Generic[R]):
    """A request answered by an ``R`` (or an ``error``). The parameter is the one place a
    request names its reply: REPLY_FOR is read from it, and the clients' typed ``request()``
    returns an ``R`` without a cast at each call."""

    req_id: str


class Exec(Request[ExecReply], tag="exec"):
    cmd_id: str
    spec: CmdSpec
    job_id: str = ""
    agent: str | None = None
    pool: str | None = None
    workspace: str | None = None


class Kill(Request[KillReply], tag="kill"):
    cmd_id: str
    agent: str | None = None


class Query(Request[QueryReply], tag="query"):
    cmd_ids: list[str]
    agent: str | None = None


class Fetch(Request[FetchReply], tag="fetch"):
    """A byte range of one stream of one command, read from the agent's spool."""

    cmd_id: str
    stream: int
    offset: int
    size: int = 1 << 20
    agent: str | None = None


class ListAgents(Request[AgentList], tag="agents"):
    """Every agent connected to this master; with ``include_gone``, also those it saw since it
    started that are not connected now (``alive`` false)."""

    include_gone: bool = False


class Ping(Request[Pong], tag="ping"):
    """Is the service there? (master, orchestrator and broker replay all answer.)"""


# --------------------------------------------------------------------------- events (PUB)


class EventBase(Base):
    """Every event is stamped by its publisher.

    ``seq`` counts without holes per (source, epoch, topic kind) -- the kind is the topic's
    first segment (log, cmd, agent, job) -- so a subscriber to all ``cmd.`` events sees a
    hole exactly when it missed one, whatever else that publisher sends.
    """

    topic: str
    source: str
    epoch: str
    seq: int
    ts: float


class LogChunk(EventBase, tag="log"):
    job_id: str
    cmd_id: str
    stream: int
    offset: int  # byte offset of data in that stream of that command
    data: bytes


class CmdStarted(EventBase, tag="cmd_started"):
    job_id: str
    cmd_id: str
    agent: str
    pid: int
    argv: list[str]


class CmdDone(EventBase, tag="cmd_done"):
    job_id: str
    cmd_id: str
    status: CmdStatus


class AgentUp(EventBase, tag="agent_up"):
    agent: AgentInfo
    master: str
    recent_done: list[str] = []


class AgentLost(EventBase, tag="agent_lost"):
    agent_id: str
    master: str
    running: list[str] = []
    reason: str = ""


class AgentGone(EventBase, tag="agent_gone"):
    """The agent said goodbye (clean shutdown)."""

    agent_id: str
    master: str


class JobChanged(EventBase, tag="job"):
    job_id: str
    state: str
    stage: str = ""
    detail: dict[str, Any] = {}


class Beacon(EventBase, tag="beacon"):
    """Every few seconds, on ``beacon.<source>``: the last ``seq`` this publisher stamped per
    kind in this epoch, so a subscriber that lost the tail of a kind (and would otherwise wait
    for a later event to show the hole) learns it. Live only: the broker does not journal it.
    Its own ``seq`` counts beacons (kind ``beacon``) and is never listed in ``last``."""

    last: dict[str, int] = {}


# --------------------------------------------------------------------------- orchestrator API


class StageRun(msgspec.Struct, omit_defaults=True):
    """One command of a job's stage timeline."""

    stage: str
    step: int
    attempt: int
    cmd_id: str
    state: str  # PENDING DISPATCHED RUNNING UNKNOWN DONE LOST CANCELLED
    agent: str = ""
    argv: list[str] = []
    created_at: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    key_line: str = ""  # the p4 line that mattered
    outcome: str = ""  # what the interpreter made of it (NEXT, RETRY, FAIL, ...)
    reason: str = ""


class JobView(msgspec.Struct, omit_defaults=True):
    job_id: str
    state: str
    stage: str
    pipeline: str
    workspace: str
    created_at: float
    updated_at: float
    agent: str = ""
    params: dict[str, Any] = {}
    reason: str = ""
    key_line: str = ""
    conflicts: list[str] = []
    change: int | None = None  # the pending change
    submitted_change: int | None = None
    queue_position: int = 0
    waiting_for: str = ""  # why nothing runs right now (no agent, backoff, a person)
    timeline: list[StageRun] = []
    attempt: int = 0  # the try of its current stage (1 first; 0 from an orchestrator before this field)


class JobReply(Base, tag="job_r"):
    req_id: str
    job: JobView


class JobList(Base, tag="jobs_r"):
    req_id: str
    jobs: list[JobView]


class Submit(Request[JobReply], tag="submit"):
    workspace: str | None = None
    source: str | None = None
    target: str | None = None
    branch_spec: str | None = None
    change: int | None = None
    desc: str = ""
    agent: str | None = None
    pool: str | None = None
    pipeline: str = "p4-integrate"
    # A saved template's parameters are the defaults; the fields given here override them.
    template: str | None = None
    # The person a web key says it submits for; the orchestrator records it as the submitter
    # only from a key of role web (from any other key it records the key's own name).
    by: str = ""


class GetJob(Request[JobReply], tag="get_job"):
    job_id: str


class ListJobs(Request[JobList], tag="list_jobs"):
    all: bool = False  # include finished jobs
    limit: int = 200


class Resume(Request[JobReply], tag="resume"):
    job_id: str


class Cancel(Request[JobReply], tag="cancel"):
    job_id: str
    revert: bool = False  # also revert the pending change and delete it


class RetryJob(Request[JobReply], tag="retry"):
    job_id: str
    from_stage: str | None = None


# --------------------------------------------------------------------------- templates and schedules


class Template(msgspec.Struct, omit_defaults=True):
    """A saved job preset: a submit's parameters under a name."""

    name: str
    workspace: str | None = None
    source: str | None = None
    target: str | None = None
    branch_spec: str | None = None
    desc: str = ""
    agent: str | None = None
    pool: str | None = None


class Schedule(msgspec.Struct, omit_defaults=True):
    """When a template runs by itself: at the times of a cron expression read in ``timezone``,
    or (``on_change``) whenever its source has a newer submitted change than its last job's.
    The fields after ``poll_s`` are the orchestrator's to fill in; a put ignores them."""

    name: str
    template: str
    cron: str = ""
    timezone: str = "UTC"
    on_change: bool = False
    poll_s: float = 60.0
    next_at: float = 0.0
    last_job: str = ""
    last_change: int | None = None
    last_run_at: float = 0.0
    note: str = ""


class TemplateReply(Base, tag="template_r"):
    req_id: str
    template: Template


class TemplateList(Base, tag="templates_r"):
    req_id: str
    templates: list[Template]


class ScheduleReply(Base, tag="schedule_r"):
    req_id: str
    schedule: Schedule


class ScheduleList(Base, tag="schedules_r"):
    req_id: str
    schedules: list[Schedule]


class PutTemplate(Request[TemplateReply], tag="put_template"):
    template: Template
    replace: bool = False  # an existing template of that name is replaced, not refused


class GetTemplate(Request[TemplateReply], tag="get_template"):
    name: str


class ListTemplates(Request[TemplateList], tag="list_templates"):
    """Every saved template, by name."""


class RemoveTemplate(Request[TemplateReply], tag="remove_template"):
    name: str


class PutSchedule(Request[ScheduleReply], tag="put_schedule"):
    schedule: Schedule
    replace: bool = False


class ListSchedules(Request[ScheduleList], tag="list_schedules"):
    """Every schedule, by name, with its next run."""


class RemoveSchedule(Request[ScheduleReply], tag="remove_schedule"):
    name: str


class CleanupJob(Request[JobReply], tag="cleanup"):
    """Revert a FAILED or CANCELLED job's pending change and delete it and its shelf."""

    job_id: str


class Approve(Request[JobReply], tag="approve"):
    """Let a job waiting for approval (review_before_submit) go on to submit its shelf."""

    job_id: str


# --------------------------------------------------------------------------- replay (broker)


class ReplayPage(Base, tag="replay_r"):
    req_id: str
    # (journal id, topic, body) with body the event frame exactly as published
    events: list[tuple[int, str, bytes]]
    last_id: int  # highest id in this page (or ``after`` if empty)
    head_id: int  # newest id in the journal when the page was read
    more: bool
    # publishers[i] is the authenticated publisher of events[i] ("" on an insecure bus). A list
    # beside ``events`` rather than a fourth tuple element: a reader that predates it ignores it.
    publishers: list[str] = []


class StatsReply(Base, tag="stats_r"):
    req_id: str
    source: str
    counters: dict[str, int]
    role: str = ""  # as Pong's


class Replay(Request[ReplayPage], tag="replay"):
    """Stream journalled events whose topic starts with ``prefix``, from journal id ``after``."""

    prefix: str = ""
    after: int = 0
    since_ts: float = 0.0
    limit: int = 1000


class Stats(Request[StatsReply], tag="stats"):
    """The service's counters (master, orchestrator and broker replay all answer)."""


# --------------------------------------------------------------------------- unions and codec

AgentToMaster = Hello | Heartbeat | Bye | ExecReply | KillReply | QueryReply | FetchReply | ErrorReply
MasterToAgent = Welcome | Heartbeat | Reregister | Exec | Kill | Query | Fetch | ErrorReply
ClientRequest = Exec | Kill | Query | Fetch | ListAgents | Ping | Stats
Reply = (
    ExecReply
    | KillReply
    | QueryReply
    | FetchReply
    | AgentList
    | Pong
    | StatsReply
    | ReplayPage
    | JobReply
    | JobList
    | TemplateReply
    | TemplateList
    | ScheduleReply
    | ScheduleList
    | ErrorReply
)
TemplateRequest = (
    PutTemplate | GetTemplate | ListTemplates | RemoveTemplate | PutSchedule | ListSchedules | RemoveSchedule
)
OrchestratorRequest = (
    Submit | GetJob | ListJobs | Resume | Cancel | RetryJob | CleanupJob | Approve | Ping | Stats | TemplateRequest
)
ReplayRequest = Replay | Stats | Ping
# The orchestrator requests that change nothing: a standby answers them (every other one is
# refused with code ``standby``), and a client may send them again to another orchestrator.
ORCHESTRATOR_READS = (GetJob, ListJobs, GetTemplate, ListTemplates, ListSchedules, Ping, Stats)
Event = LogChunk | CmdStarted | CmdDone | AgentUp | AgentLost | AgentGone | JobChanged | Beacon


def _declared_reply(cls: type[Request[Any]]) -> type[Base]:
    # ``Exec(Request[ExecReply])`` keeps ``Request[ExecReply]`` in its own namespace (PEP 560).
    reply: type[Base] = get_args(cls.__dict__["__orig_bases__"][0])[0]
    return reply


# Every request type -> the reply type that answers it (besides ``error``), read from each
# request's ``Request[...]`` parameter so the static and the runtime view cannot disagree.
REPLY_FOR: dict[type[Request[Any]], type[Base]] = {cls: _declared_reply(cls) for cls in Request.__subclasses__()}

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder] = {}


class ProtocolError(ValueError):
    """A frame that is not a valid message of the expected kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode(frame: bytes, kind: Any) -> Any:
    """Decode one frame as a member of union ``kind``; raise ProtocolError with a precise reason."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    try:
        return dec.decode(frame)
    except msgspec.ValidationError as exc:
        raise ProtocolError(_classify(frame, kind), str(exc)) from None
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 in a str
        raise ProtocolError("bad_frame", f"undecodable frame: {exc}") from None


def _classify(frame: bytes, kind: Any) -> str:
    """Why a decodable frame is not a valid message here: not a message at all, a type this
    socket does not take, or a known type with bad fields."""
    try:
        raw = msgspec.msgpack.decode(frame)
    except (msgspec.DecodeError, ValueError):  # ValueError: invalid UTF-8 in a str
        return "bad_frame"
    if not isinstance(raw, dict) or not isinstance(raw.get("t"), str):
        return "bad_frame"
    known = {cls.__struct_config__.tag for cls in getattr(kind, "__args__", (kind,))}
    return "bad_request" if raw["t"] in known else "unknown_type"


def encode_event(ev: EventBase) -> list[bytes]:
    return [ev.topic.encode(), _encoder.encode(ev)]


class Delivered(NamedTuple):
    """An event as a subscriber receives it from the broker."""

    event: Event
    # The key name the broker authenticated the publisher by ("" on an insecure bus, or for an
    # event that did not come through a broker). Unlike ``event.source`` it cannot be forged.
    publisher: str


def decode_delivered(frames: list[bytes]) -> Delivered:
    """``[topic, body, publisher]`` from the broker, or a publisher's own ``[topic, body]``
    (publisher "")."""
    if len(frames) not in (2, 3):
        raise ProtocolError(
            "bad_frame", f"an event has 2 frames (topic, body) or 3 (topic, body, publisher), got {len(frames)}"
        )
    ev = decode(frames[1], Event)
    if ev.topic.encode() != frames[0]:
        raise ProtocolError("bad_frame", f"topic frame {frames[0]!r} does not match body topic {ev.topic!r}")
    try:
        publisher = frames[2].decode() if len(frames) == 3 else ""
    except UnicodeDecodeError:
        raise ProtocolError("bad_frame", f"publisher frame {frames[2]!r} is not UTF-8") from None
    return Delivered(ev, publisher)


def decode_event(frames: list[bytes]) -> Event:
    """The event alone, for readers that do not act on who published it."""
    return decode_delivered(frames).event


def decode_routed(frames: list[bytes], kind: Any) -> tuple[bytes | None, Any, ErrorReply | None]:
    """What a ROUTER received: ``[identity, frame]`` -> (identity, message, None), or
    (identity, None, the error to answer) -- identity None when there is nobody to answer."""
    if len(frames) != 2:
        if len(frames) < 2:
            return None, None, None
        # E.g. a REQ socket's empty delimiter before the message: echo a req_id if a frame has one.
        req_id = next((r for r in map(req_id_of, frames[1:]) if r), "")
        return (
            frames[0],
            None,
            ErrorReply(
                req_id=req_id, code="bad_frame", message=f"expected one frame per message, got {len(frames) - 1}"
            ),
        )
    identity, frame = frames
    try:
        msg = decode(frame, kind)
    except ProtocolError as exc:
        return identity, None, ErrorReply(req_id=req_id_of(frame), code=exc.code, message=exc.message)
    over = over_limit(msg)
    if over:
        return identity, None, ErrorReply(req_id=msg.req_id, code="bad_request", message=over)
    return identity, msg, None


def over_limit(msg: Base) -> str:
    """Why a well-formed request is larger than a service will serve ("" when it is not): the
    caps of common/limits.py that a request cannot be paged around. ("Up to" sizes -- a
    fetch's ``size``, a replay's ``limit`` -- are clamped by the server instead.)"""
    if isinstance(msg, Query) and len(msg.cmd_ids) > limits.MAX_QUERY_IDS:
        return (
            f"query names {len(msg.cmd_ids)} command ids, over the limit of {limits.MAX_QUERY_IDS} "
            "per request (MAX_QUERY_IDS): ask in batches"
        )
    if isinstance(msg, Replay) and len(msg.prefix.encode()) > limits.MAX_SUBSCRIPTION_BYTES:
        return (
            f"replay prefix is {len(msg.prefix.encode())} bytes, over the limit of "
            f"{limits.MAX_SUBSCRIPTION_BYTES} (MAX_SUBSCRIPTION_BYTES): no topic is that long"
        )
    return ""


def reply_to(req: Request[R], reply: Base) -> R:
    """``reply`` as the answer to ``req`` (an ErrorReply is the caller's to handle first); a
    reply of another type is a ProtocolError ``bad_reply``, not an AttributeError later."""
    want = REPLY_FOR[type(req)]
    if not isinstance(reply, want):
        raise ProtocolError(
            "bad_reply", f"{_tag(req)} was answered with {_tag(reply)}, expected {_tag(want)} (req_id {req.req_id})"
        )
    # REPLY_FOR[type(req)] is R by construction (read from the Request[R] parameter).
    return cast(R, reply)


def _tag(msg: Base | type[Base]) -> str:
    return str(msg.__struct_config__.tag)


class _ReqIdOnly(msgspec.Struct):
    # Other keys are skipped unread, so a bad value elsewhere (wrong type, invalid UTF-8)
    # does not hide the req_id.
    req_id: str = ""


_req_id_decoder = msgspec.msgpack.Decoder(_ReqIdOnly)


def req_id_of(frame: bytes) -> str:
    """Best-effort req_id of a frame that failed to decode, so the error reply can echo it."""
    try:
        return _req_id_decoder.decode(frame).req_id
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return ""
