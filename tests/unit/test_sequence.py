"""Gap detection keyed on the authenticated publisher: a forged seq blinds only its forger."""

from __future__ import annotations

import dataclasses

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


# ---- several brokers: holes are kept, a late copy fills one exactly once


def test_with_holes_kept_a_late_copy_from_the_other_broker_fills_the_hole_once():
    g = GapDetector(keep_holes=True)
    assert g.observe("a", "log.J.c", "e1", 1, publisher="a") == (True, None, False)
    new, gap, _ = g.observe("a", "log.J.c", "e1", 5, publisher="a")  # broker A dropped 2..4
    assert new and gap is not None and (gap.first_missing, gap.last_missing) == (2, 4)
    assert g.observe("a", "log.J.c", "e1", 5, publisher="a")[0] is False  # B's copy of 5
    assert g.observe("a", "log.J.c", "e1", 3, publisher="a") == (True, None, False)  # B's 3 fills
    assert g.observe("a", "log.J.c", "e1", 3, publisher="a")[0] is False  # once
    assert [(h.first_missing, h.last_missing) for h in g.holes("a", "a", "log", "e1")] == [(2, 2), (4, 4)]
    assert g.observe("a", "log.J.c", "e1", 2, publisher="a")[0] is True
    assert g.observe("a", "log.J.c", "e1", 4, publisher="a")[0] is True
    assert g.holes("a", "a", "log", "e1") == []
    assert g.observe("a", "log.J.c", "e1", 1, publisher="a")[0] is False  # below every hole: a copy


def test_without_holes_kept_a_seq_below_the_highest_is_a_copy():
    """One broker forwards in order: what it skipped it will never send again."""
    g = GapDetector()
    g.observe("a", "log.J.c", "e1", 1, publisher="a")
    g.observe("a", "log.J.c", "e1", 5, publisher="a")
    assert g.observe("a", "log.J.c", "e1", 3, publisher="a")[0] is False
    assert g.holes("a", "a", "log", "e1") == []


def test_a_hole_given_up_is_no_longer_fillable_and_only_old_holes_are_listed_as_due():
    now = [100.0]
    g = GapDetector(keep_holes=True, clock=lambda: now[0])
    g.observe("a", "cmd.J.c", "e1", 1, publisher="a")
    g.observe("a", "cmd.J.c", "e1", 10, publisher="a")  # hole 2..9 opened at 100
    now[0] = 105.0
    g.observe("a", "cmd.J.c", "e1", 20, publisher="a")  # hole 11..19 opened at 105
    due = g.holes("a", "a", "cmd", "e1", opened_before=104.0)
    assert [(h.first_missing, h.last_missing) for h in due] == [(2, 9)]
    g.give_up(due[0])
    assert g.observe("a", "cmd.J.c", "e1", 5, publisher="a")[0] is False  # reported lost: a copy now
    assert g.observe("a", "cmd.J.c", "e1", 15, publisher="a")[0] is True
    # Giving up part of a hole keeps the rest open.
    g.give_up(dataclasses.replace(g.holes("a", "a", "cmd", "e1")[0], first_missing=11, last_missing=12))
    assert [(h.first_missing, h.last_missing) for h in g.holes("a", "a", "cmd", "e1")] == [(13, 14), (16, 19)]


def test_open_holes_are_bounded_per_run():
    from common import sequence

    g = GapDetector(keep_holes=True)
    g.observe("a", "log.J.c", "e1", 0, publisher="a")
    for seq in range(2, 2 * (sequence.MAX_HOLES + 5), 2):  # every odd seq missing
        g.observe("a", "log.J.c", "e1", seq, publisher="a")
    holes = g.holes("a", "a", "log", "e1")
    assert len(holes) == sequence.MAX_HOLES
    assert g.observe("a", "log.J.c", "e1", 1, publisher="a")[0] is False  # the oldest, given up
    assert g.observe("a", "log.J.c", "e1", holes[0].first_missing, publisher="a")[0] is True
