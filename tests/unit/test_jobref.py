"""Job ids by a unique end, in any case; stage names in any case (issue 12 item 7)."""

from __future__ import annotations

from p4bus.jobref import matches, stage_name

IDS = ["INT-20261130-0014", "INT-20261201-0001", "INT-20261201-0014", "INT-20261201-0114"]


def test_the_whole_id_in_any_case() -> None:
    assert matches("int-20261201-0014", IDS) == ["INT-20261201-0014"]


def test_digits_name_the_jobs_number_on_any_day() -> None:
    assert matches("1", IDS) == ["INT-20261201-0001"]
    assert matches("0001", IDS) == ["INT-20261201-0001"]
    assert matches("114", IDS) == ["INT-20261201-0114"]
    assert matches("14", IDS) == ["INT-20261130-0014", "INT-20261201-0014"]  # ambiguous: both listed


def test_any_other_end_of_the_id() -> None:
    assert matches("1201-0014", IDS) == ["INT-20261201-0014"]
    assert matches("30-0014", IDS) == ["INT-20261130-0014"]
    assert matches("nope", IDS) == [] and matches("", IDS) == []


def test_stage_names_in_any_case() -> None:
    assert stage_name("integrate") == "INTEGRATE" and stage_name(" resolve_pass_1 ") == "RESOLVE_PASS_1"
    assert stage_name("nosuch") == "NOSUCH"  # the orchestrator refuses it, listing the stages
    assert stage_name(None) is None
