import re
from pathlib import Path

import msgspec
import pytest

from common import protocol as P
from common.sequence import GapDetector, Stamper

pytestmark = pytest.mark.timeout(10)

SAMPLES = [
    P.Hello(proto=1, agent=P.AgentInfo(agent_id="a1", pools=["x"], workspaces=["ws"]), heartbeat_s=1.0),
    P.Welcome(master_id="m", heartbeat_s=1.0),
    P.Heartbeat(running=["c1"], free_slots=3),
    P.Exec(req_id="r1", cmd_id="c1", spec=P.CmdSpec(argv=["p4", "sync"], stdin=b"\x00\xff", env={"P4PORT": "x"})),
    P.Kill(req_id="r2", cmd_id="c1"),
    P.Query(req_id="r3", cmd_ids=["c1", "c2"], agent="a1"),
    P.Fetch(req_id="r4", cmd_id="c1", stream=P.STDERR, offset=10, size=5),
    P.ExecReply(req_id="r1", cmd_id="c1", agent="a1", status=P.CmdStatus(cmd_id="c1", state="running", pid=5)),
    P.FetchReply(req_id="r4", cmd_id="c1", stream=2, offset=10, data=b"\xff\xfe", total=12, complete=True),
    P.ErrorReply(req_id="r9", code="no_agent", message="none"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = P.encode(msg)
    kinds = [P.AgentToMaster, P.MasterToAgent, P.ClientRequest, P.Reply]
    decoded = [P.decode(data, k) for k in kinds if _fits(data, k)]
    assert decoded and all(d == msg for d in decoded)


def _fits(data, kind):
    try:
        P.decode(data, kind)
        return True
    except P.ProtocolError:
        return False


def test_reply_echoes_req_id_field_exists_on_every_request_and_reply():
    for union in (P.ClientRequest, P.Reply):
        for cls in union.__args__:
            assert "req_id" in cls.__struct_fields__, cls


def test_event_round_trip_and_topic_check():
    s = Stamper("agent-1", "e1")
    ev = P.LogChunk(**s.stamp("log.J.c1"), job_id="J", cmd_id="c1", stream=1, offset=0, data=b"\x00abc")
    frames = P.encode_event(ev)
    assert frames[0] == b"log.J.c1"
    assert P.decode_event(frames) == ev
    with pytest.raises(P.ProtocolError) as err:
        P.decode_event([b"log.other", frames[1]])
    assert err.value.code == "bad_frame"
    with pytest.raises(P.ProtocolError):
        P.decode_event([frames[0]])


def test_delivered_events_carry_the_brokers_publisher_frame():
    s = Stamper("agent-1", "e1")
    ev = P.CmdStarted(**s.stamp("cmd.J.c1"), job_id="J", cmd_id="c1", agent="agent-1", pid=7, argv=["p4"])
    frames = P.encode_event(ev)
    assert len(frames) == 2  # what a publisher sends: it cannot name itself
    assert P.decode_delivered([*frames, b"agent-1"]) == (ev, "agent-1")
    assert P.decode_delivered(frames) == (ev, "")  # not through a broker: nobody vouches for it
    assert P.decode_event([*frames, b"agent-1"]) == ev
    for bad in ([*frames, b"\xff"], [*frames, b"a", b"b"]):
        with pytest.raises(P.ProtocolError) as err:
            P.decode_delivered(bad)
        assert err.value.code == "bad_frame"


@pytest.mark.parametrize(
    "frame,code",
    [
        (b"\xc1", "bad_frame"),  # never-used msgpack byte
        (msgspec.msgpack.encode(5), "bad_frame"),
        (msgspec.msgpack.encode({"t": "nope", "req_id": "x"}), "unknown_type"),
        (msgspec.msgpack.encode({"t": "exec", "req_id": "x"}), "bad_request"),
        (msgspec.msgpack.encode({"t": "kill", "req_id": "x", "cmd_id": 5}), "bad_request"),
    ],
)
def test_bad_frames_raise_typed_errors(frame, code):
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frame, P.ClientRequest)
    assert err.value.code == code


def test_req_id_of_recovers_id_from_invalid_request():
    assert P.req_id_of(msgspec.msgpack.encode({"t": "exec", "req_id": "abc"})) == "abc"
    assert P.req_id_of(b"\xc1") == ""


def test_stamper_counts_per_kind_without_holes():
    s = Stamper("a", "e")
    seqs = [(t, s.stamp(t)["seq"]) for t in ["log.j.c", "cmd.j.c", "log.j.c", "log.j.d", "cmd.j.c"]]
    assert seqs == [("log.j.c", 1), ("cmd.j.c", 1), ("log.j.c", 2), ("log.j.d", 3), ("cmd.j.c", 2)]


def test_gap_detector():
    g = GapDetector()
    assert g.observe("a", "cmd.x", "e1", 1) == (True, None, False)
    assert g.observe("a", "cmd.x", "e1", 2)[1] is None
    new, gap, _ = g.observe("a", "cmd.y", "e1", 5)
    assert new and (gap.first_missing, gap.last_missing) == (3, 4)
    assert g.observe("a", "cmd.x", "e1", 4)[0] is False  # duplicate / old
    assert g.observe("a", "log.x", "e1", 1)[1] is None  # other kind counts separately
    assert g.observe("a", "cmd.x", "e2", 1) == (True, None, True)  # restart: new epoch


def test_random_bytes_never_escape_as_anything_but_protocol_errors():
    import random

    rng = random.Random(11)
    for _ in range(20000):
        frame = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 48)))
        for kind in (P.ClientRequest, P.AgentToMaster, P.MasterToAgent, P.Reply, P.OrchestratorRequest):
            try:
                P.decode(frame, kind)
            except P.ProtocolError as exc:
                assert exc.code in ("bad_frame", "unknown_type", "bad_request")
        try:
            P.decode_event([b"log.x", frame])
        except P.ProtocolError:
            pass


# --------------------------------------------------------------------------- docs/protocol.md reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_HEADING = re.compile(r"^### (?:.*\((\w+)\)|(\w+))$")
_ROW = re.compile(r"^\| `(\w+)` \| [^|]* \| ([^|]*) \|")


def render_default(field: msgspec.structs.FieldInfo) -> str:
    """How the reference writes a field's default: what a receiver fills in for a missing key."""
    if field.required:
        return "required"
    value = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if isinstance(value, bytes):
        return "empty bin" if not value else repr(value)
    return f"`{msgspec.json.encode(value).decode()}`"


def _documented() -> dict[str, dict[str, str]]:
    """Struct name -> {field: default as written}, from the table under each ``### Name`` or
    ``### ... (Name)`` heading."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            m = _HEADING.match(line)
            current = out.setdefault(m.group(1) or m.group(2), {}) if m else None
        elif current is not None and (row := _ROW.match(line)):
            current[row.group(1)] = row.group(2).strip()
    return out


def _wire_structs() -> list[type[msgspec.Struct]]:
    return [
        cls
        for cls in vars(P).values()
        if isinstance(cls, type)
        and issubclass(cls, msgspec.Struct)
        and cls.__module__ == P.__name__
        and not cls.__name__.startswith("_")
        and cls not in (P.Base, P.Request)
    ]


@pytest.mark.parametrize("cls", _wire_structs(), ids=lambda c: c.__name__)
def test_protocol_doc_lists_every_field_with_its_default(cls):
    documented = _documented().get(cls.__name__)
    assert documented is not None, f"docs/protocol.md has no '### {cls.__name__}' or '### ... ({cls.__name__})' table"
    # An event's stamp is documented once, under EventBase.
    own = [
        f
        for f in msgspec.structs.fields(cls)
        if cls is P.EventBase or not issubclass(cls, P.EventBase) or f.name not in P.EventBase.__struct_fields__
    ]
    assert documented == {f.name: render_default(f) for f in own}
