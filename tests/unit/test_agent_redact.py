"""Known secrets out of output (agent/redact.py): whole, split over chunks, never held forever."""

from __future__ import annotations

from agent.redact import MAX_SECRETS, Redactor, secrets_in


def test_the_lines_of_a_secret_stdin_are_the_secrets() -> None:
    assert secrets_in(b"hunter22\r\n\nabc\nsecond-one\n") == [b"hunter22", b"second-one"]  # "abc": too short


def test_every_occurrence_is_masked_and_a_final_chunk_holds_nothing_back() -> None:
    r = Redactor()
    r.learn(b"hunter22\n")
    assert r.apply(b"pw hunter22 and hunter22\nhunt", final=True) == (b"pw *** and ***\nhunt", b"")


def test_a_secret_split_over_chunks_is_caught_by_holding_its_start_back() -> None:
    r = Redactor()
    r.learn(b"hunter22\n")
    r.learn(b"other-secret\n")
    out, held = r.apply(memoryview(b"line\npw=hunt"), final=False)
    assert (out, held) == (b"line\npw=", b"hunt")
    assert r.apply(held + b"er22 ok\n", final=False) == (b"*** ok\n", b"")
    # A start that nothing completes goes out unchanged when released.
    out, held = r.apply(b"oth", final=False)
    assert (out, held) == (b"", b"oth")
    assert r.apply(held + b"erwise\n", final=False) == (b"otherwise\n", b"")


def test_the_newest_secrets_are_kept() -> None:
    r = Redactor()
    for i in range(MAX_SECRETS + 5):
        r.learn(b"secret-%03d\n" % i)
    r.learn(b"secret-000\n")
    assert len(r.secrets) == MAX_SECRETS and r.secrets[-1] == b"secret-000" and b"secret-005" not in r.secrets
