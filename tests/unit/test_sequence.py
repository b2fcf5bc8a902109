"""Gap detection keyed on the authenticated publisher: a forged seq blinds only its forger."""

from __future__ import annotations

import pytest

from common.sequence import GapDetector, Stamper

pytestmark = pytest.mark.timeout(10)


def observe_real(g: GapDetector, stamper: Stamper, topic: str) -> tuple[bool, object]:
    st = stamper.stamp(topic)
    new, gap, _restarted = g.observe(st["source"], topic, st["epoch"], st["seq"], publisher=st["source"])
    return new, gap


def test_a_forged_huge_seq_under_an_agents_source_does_not_hide_its_real_events():
    g = GapDetector()
    real = Stamper("agent-1", "e1")
    assert observe_real(g, real, "cmd.J.c1") == (True, None)
    # Another key writes agent-1's source and epoch with seq 10**15...
    new, gap, restarted = g.observe("agent-1", "cmd.J.c1", "e1", 10**15, publisher="forger")
    assert (new, gap, restarted) == (True, None, False)  # ...which counts for the forger alone
    # agent-1's next real events are still new, without a hole.
    for _ in range(3):
        assert observe_real(g, real, "cmd.J.c1") == (True, None)


def test_without_publishers_a_forged_seq_blinds_the_source():
    """What an insecure bus (publisher "") still suffers, and why the publisher is in the key."""
    g = GapDetector()
    assert g.observe("agent-1", "cmd.J.c", "e1", 1)[0]
    assert g.observe("agent-1", "cmd.J.c", "e1", 10**15)[0]
    assert g.observe("agent-1", "cmd.J.c", "e1", 2)[0] is False


def test_gaps_and_restarts_name_the_publisher():
    g = GapDetector()
    g.observe("agent-1", "cmd.J.c", "e1", 1, publisher="agent-1")
    new, gap, _ = g.observe("agent-1", "cmd.J.c", "e1", 4, publisher="agent-1")
    assert new and gap is not None
    assert (gap.publisher, gap.source, gap.kind, gap.first_missing, gap.last_missing) == (
        "agent-1",
        "agent-1",
        "cmd",
        2,
        3,
    )
    assert g.observe("agent-1", "cmd.J.c", "e2", 1, publisher="agent-1") == (True, None, True)


def test_peek_shows_a_hole_without_recording_it():
    g = GapDetector()
    g.observe("a", "log.J.c", "e1", 1, publisher="a")
    gap = g.peek("a", "log.J.c", "e1", 5, publisher="a")
    assert gap is not None and (gap.first_missing, gap.last_missing, gap.count) == (2, 4, 3)
    assert g.peek("a", "log.J.c", "e1", 2, publisher="a") is None  # nothing was recorded
    assert g.peek("a", "log.J.c", "e9", 7, publisher="a") is None  # first sighting of a run: a baseline


def test_a_beacon_shows_the_lost_tail_of_each_kind_seen_and_the_kinds_never_seen():
    g = GapDetector()
    g.observe("a", "log.J.c", "e1", 3, publisher="a")
    g.observe("a", "cmd.J.c", "e1", 2, publisher="a")
    gaps, unseen = g.behind("a", "a", "e1", {"log": 7, "cmd": 2, "job": 4})
    assert [(x.kind, x.first_missing, x.last_missing) for x in gaps] == [("log", 4, 7)]
    assert unseen == ["job"]
    # Another publisher's beacon under the same source says nothing about a's events.
    assert g.behind("forger", "a", "e1", {"log": 10**9}) == ([], ["log"])


def test_skip_to_makes_a_given_up_range_seen_but_never_goes_back():
    g = GapDetector()
    g.observe("a", "log.J.c", "e1", 3, publisher="a")
    g.skip_to("a", "a", "log", "e1", 7)
    assert g.behind("a", "a", "e1", {"log": 7}) == ([], [])
    g.skip_to("a", "a", "log", "e1", 5)
    assert g.highest("a", "a", "log", "e1") == 7
    assert g.observe("a", "log.J.c", "e1", 6, publisher="a")[0] is False
    assert g.observe("a", "log.J.c", "e1", 8, publisher="a") == (True, None, False)


def test_the_previous_run_is_still_deduplicated_after_a_restart_and_older_ones_forgotten():
    """A replay can deliver the end of a publisher's previous run after its new run began."""
    g = GapDetector()
    assert g.observe("a", "log.J.c", "e1", 5, publisher="a") == (True, None, False)
    assert g.observe("a", "log.J.c", "e2", 1, publisher="a") == (True, None, True)
    assert g.observe("a", "log.J.c", "e1", 5, publisher="a")[0] is False  # seen: a duplicate
    new, gap, restarted = g.observe("a", "log.J.c", "e1", 8, publisher="a")
    assert new and not restarted and gap is not None and (gap.first_missing, gap.last_missing) == (6, 7)
    g.observe("a", "log.J.c", "e3", 1, publisher="a")
    assert g.highest("a", "a", "log", "e1") is None  # two runs are kept per key
    assert g.highest("a", "a", "log", "e2") == 1


def test_stamper_last_is_per_kind_and_leaves_beacons_out():
    s = Stamper("a", "e1")
    for topic in ("log.J.c", "log.J.c", "cmd.J.c", "beacon.a"):
        s.stamp(topic)
    assert s.last() == {"log": 2, "cmd": 1}
