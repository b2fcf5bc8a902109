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
