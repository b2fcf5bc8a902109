import pytest

from common.protocol import AgentInfo
from master.registry import NoAgent, Registry

pytestmark = pytest.mark.timeout(10)


def _reg():
    r = Registry()
    r.register(b"i1", AgentInfo(agent_id="a1", pools=["p"], workspaces=["ws1"], slots=2, epoch="e"), 1.0, now=100)
    r.register(b"i2", AgentInfo(agent_id="a2", pools=["p", "q"], workspaces=["ws2"], slots=4, epoch="e"), 1.0, now=100)
    return r


def test_select_by_agent_pool_workspace():
    r = _reg()
    assert r.select("a1", None, None).agent_id == "a1"
    assert r.select(None, "q", None).agent_id == "a2"
    assert r.select(None, None, "ws1").agent_id == "a1"
    assert r.select(None, "p", None).agent_id == "a2"  # more free slots
    assert r.select(None, "p", None, exclude={"a2"}).agent_id == "a1"


@pytest.mark.parametrize(
    "args,needle",
    [
        (("zz", None, None), "agent 'zz' is not connected"),
        (("a1", None, "ws2"), "has no workspace 'ws2'"),
        ((None, "nopool", None), "no live agent with pool 'nopool'"),
        ((None, "p", "ws9"), "pool 'p' and workspace 'ws9'"),
    ],
)
def test_select_rejections_name_what_exists(args, needle):
    with pytest.raises(NoAgent) as err:
        _reg().select(*args)
    assert needle in str(err.value)
    if args[0] is None:
        assert "connected: a1, a2" in str(err.value)


def test_expiry_after_three_missed_intervals():
    r = _reg()
    r.touch(r.agents["a2"], now=102.5)
    assert [x.agent_id for x in r.expire(1.0, now=102.9)] == []
    assert [x.agent_id for x in r.expire(1.0, now=103.1)] == ["a1"]
    assert r.lookup(b"i1") is None and r.lookup(b"i2").agent_id == "a2"


def test_expiry_scans_skipped_until_one_may_be_due_stay_exact():
    # The master asks on every wake-up; the registry skips scans before the earliest deadline.
    r = _reg()
    assert r.expire(0.5, now=100.5) == []  # earliest deadline now 103.0
    r.touch(r.agents["a1"], now=102.0)
    # An agent that joins after that scan with a shorter interval is still expired on time.
    r.register(b"i3", AgentInfo(agent_id="a3", epoch="e"), 0.2, now=101.0)  # due at 101 + 3 * 0.5
    assert [x.agent_id for x in r.expire(0.5, now=102.4)] == []
    assert [x.agent_id for x in r.expire(0.5, now=102.6)] == ["a3"]
    assert [x.agent_id for x in r.expire(0.5, now=103.1)] == ["a2"]
    assert [x.agent_id for x in r.expire(0.5, now=104.9)] == []  # a1 spoke at 102: due at 105.0
    assert [x.agent_id for x in r.expire(0.5, now=105.1)] == ["a1"]


def test_register_reports_new_epoch_and_tracks_owners():
    r = _reg()
    assert r.register(b"i1", AgentInfo(agent_id="a1", epoch="e", running=["c1"]), 1.0) is False
    assert r.owner("c1") == "a1"
    assert r.register(b"i1", AgentInfo(agent_id="a1", epoch="e2"), 1.0) is True
    r.assign("c2", r.agents["a2"])
    assert r.owner("c2") == "a2" and "c2" in r.agents["a2"].snapshot().running


def test_an_agent_short_of_spool_space_gets_no_work_and_the_refusal_says_why():
    r = Registry(min_spool_free=64 << 20)
    r.register(b"i1", AgentInfo(agent_id="full", pools=["p"], spool_free=1 << 20), 1.0)
    r.register(b"i2", AgentInfo(agent_id="old", pools=["q"]), 1.0)  # reports nothing: not judged
    with pytest.raises(NoAgent, match=r"agent full has 1\.0 MiB free for its spool, below .*min_spool_free_mb"):
        r.select(None, "p", None)
    with pytest.raises(NoAgent, match=r"agent full has 1\.0 MiB"):
        r.select("full", None, None)
    assert r.select(None, "q", None).agent_id == "old"
    rec = r.agents["full"]
    r.heartbeat(rec, [], 1, spool_free=100 << 20)  # space freed
    assert r.select(None, "p", None).agent_id == "full"
    assert r.agents["full"].snapshot().spool_free == 100 << 20
