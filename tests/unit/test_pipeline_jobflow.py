"""Jobs that fail fast and leave no mess: the given source change is checked, conflict markers
left in resolved files send the job back, a person's approval gates the submit."""

from __future__ import annotations

import pytest
from test_pipeline_helpers import err, interpret, ok

from orchestrator.pipeline import OutcomeKind as K

pytestmark = pytest.mark.timeout(10)

# ---------------------------------------------------------------------------- --change N

SUBMITTED = "... Change 42\n... Date 2026/12/01 16:34:46\n... Client ws\n... User bob\n... Status submitted\n"


def test_given_submitted_change_goes_on():
    outcome = interpret("GET_LATEST_CL", ok(SUBMITTED), vars={}, change=42)
    assert outcome.kind is K.NEXT
    assert outcome.key_line == "Change 42 by bob@ws (submitted)"
    assert outcome.updates == {}


def test_unknown_change_fails_with_p4s_line():
    outcome = interpret("GET_LATEST_CL", err("Change 999 unknown.\n"), vars={}, change=999)
    assert outcome.kind is K.FAIL
    assert outcome.reason == "source change 999 cannot be used"
    assert outcome.key_line == "Change 999 unknown."


def test_pending_change_fails_naming_its_status():
    outcome = interpret("GET_LATEST_CL", ok(SUBMITTED.replace("submitted", "pending")), vars={}, change=42)
    assert outcome.kind is K.FAIL
    assert "source change 42 is pending, not submitted" in outcome.reason
    assert outcome.key_line == "Change 42 by bob@ws (pending)"


def test_a_spec_for_another_number_is_not_taken_for_the_given_change():
    # `change -o` of a new change prints a template ("Change new"): never a submitted change.
    outcome = interpret("GET_LATEST_CL", ok("... Change new\n... Status new\n"), vars={}, change=42)
    assert outcome.kind is K.FAIL
