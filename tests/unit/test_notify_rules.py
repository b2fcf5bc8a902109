"""Which job events are news and for whom, and the [notify] checks (p4bus/notify/rules.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config as cfgmod
from common.config import ConfigError, NotifyConf, NotifyReceiver, NotifyRule
from p4bus.notify import backoff, rules


@pytest.mark.parametrize(
    ("previous", "state", "kind"),
    [
        (None, "WAITING_RESOLVE", "waiting"),
        ("RUNNING", "WAITING_RESOLVE", "waiting"),
        ("WAITING_RESOLVE", "WAITING_RESOLVE", None),  # a re-check found the same conflict
        ("WAITING_RESOLVE", "RUNNING", None),
        ("RUNNING", "FAILED", "failed"),
        ("RUNNING", "DONE", "done"),
        ("RUNNING", "NOTHING_TO_DO", "done"),
        ("QUEUED", "CANCELLED", "cancelled"),
        (None, "QUEUED", None),
        ("RUNNING", "RETRY_WAIT", None),
        ("FAILED", "RUNNING", None),
        ("RUNNING", "FAILED", "failed"),  # retried and failed again: news again
    ],
)
def test_news(previous, state, kind):
    assert rules.news(previous, state) == kind


def test_receivers_for_matches_workspace_patterns_and_kinds_once_each_in_rule_order():
    rs = [
        NotifyRule(receivers=["team-a", "mail"], workspaces=["release-*"], events=["waiting"]),
        NotifyRule(receivers=["oncall", "team-a"], events=["failed", "waiting"]),
        NotifyRule(receivers=["audit"], workspaces=["release-1"], events=["done"]),
    ]
    assert rules.receivers_for(rs, "release-1", "waiting") == ["team-a", "mail", "oncall"]
    assert rules.receivers_for(rs, "dev", "waiting") == ["oncall", "team-a"]
    assert rules.receivers_for(rs, "release-1", "done") == ["audit"]
    assert rules.receivers_for(rs, "Release-1", "done") == []  # patterns match case-sensitively
    assert rules.receivers_for(rs, "dev", "cancelled") == []
    assert rules.receivers_for([], "dev", "failed") == []


def hook(url: str = "https://hooks.example.com/x") -> NotifyReceiver:
    return NotifyReceiver(kind="webhook", url=url)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            NotifyConf(receivers={"a": hook()}, rules=[NotifyRule(receivers=["a", "b"])]),
            "notify.rules[0] names receiver 'b', which [notify.receivers] does not define (defined: a)",
        ),
        (
            NotifyConf(receivers={"a": hook("ftp://x/y")}),
            "notify.receivers.a.url: ftp://x... is not an http:// or https:// URL",
        ),
        (
            NotifyConf(receivers={"s": NotifyReceiver(kind="slack")}),
            "notify.receivers.s (kind slack) needs url or url_file (a 0600 file holding the URL), one of them",
        ),
        (
            NotifyConf(receivers={"s": NotifyReceiver(kind="slack", url="https://a/", url_file="/f")}),
            "notify.receivers.s (kind slack) needs url or url_file",
        ),
        (
            NotifyConf(
                receivers={"m": NotifyReceiver(kind="email", smtp_host="h", sender="a@b", to=["c@d"], url="https://a/")}
            ),
            "notify.receivers.m (kind email) has url/url_file, which only webhooks have",
        ),
        (
            NotifyConf(receivers={"m": NotifyReceiver(kind="email", sender="a@b")}),
            "notify.receivers.m (kind email) needs smtp_host, to",
        ),
        (
            NotifyConf(
                receivers={"m": NotifyReceiver(kind="email", smtp_host="h", sender="a@b", to=["c@d"], username="u")}
            ),
            "notify.receivers.m: username and password_file go together",
        ),
        (NotifyConf(web_url="dash.example.com"), "notify.web_url: no scheme://... is not an http"),
    ],
)
def test_check_names_the_setting_at_fault(conf, message):
    with pytest.raises(ConfigError) as err:
        rules.check(conf)
    assert str(err.value).startswith(message)


def test_check_passes_a_working_configuration():
    rules.check(
        NotifyConf(
            web_url="https://dash.example.com/p4bus",
            receivers={
                "hook": hook(),
                "chat": NotifyReceiver(kind="slack", url="https://hooks.slack.com/services/T/B/X"),
                "mail": NotifyReceiver(
                    kind="email", smtp_host="smtp.example.com", sender="p4bus@example.com", to=["a@b"]
                ),
            },
            rules=[NotifyRule(receivers=["hook", "chat", "mail"])],
        )
    )


def test_notify_settings_from_toml_and_environment():
    tree = {
        "notify": {
            "receivers": {"hook": {"kind": "webhook", "url": "https://h.example.com/"}},
            "rules": [{"receivers": ["hook"], "events": ["failed"]}],
        }
    }
    cfg = cfgmod.from_tree(cfgmod.deep_merge(tree, cfgmod.env_overrides({"P4BUS_NOTIFY_WEB_URL": "https://d/"})))
    assert cfg.notify.rules[0].workspaces == ["*"] and cfg.notify.rules[0].events == ["failed"]
    assert cfg.notify_web_url() == "https://d"
    assert cfgmod.Config(port_base=9190).notify_web_url() == "http://127.0.0.1:9196"
    assert cfgmod.Config(state_dir="/srv/p4bus").notify_state_path().as_posix() == "/srv/p4bus/notify.db"
    with pytest.raises(ConfigError, match="notify"):
        cfgmod.from_tree({"notify": {"rules": [{"receivers": ["x"], "events": ["finished"]}]}})


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [(1, 0.0, 1.0), (2, 0.0, 2.0), (3, 0.0, 4.0), (9, 0.0, 60.0), (10_000, 0.0, 60.0), (0, 0.0, 1.0)],
)
def test_backoff_doubles_up_to_the_cap(failures, jitter, expected):
    assert backoff.delay_s(failures, 1.0, 60.0, jitter) == expected


def test_backoff_jitter_moves_it_by_a_fifth_at_most():
    assert backoff.delay_s(3, 1.0, 60.0, 1.0) == pytest.approx(4.8)
    assert backoff.delay_s(3, 1.0, 60.0, -1.0) == pytest.approx(3.2)
    assert backoff.delay_s(3, 1.0, 60.0, 7.0) == pytest.approx(4.8)


def test_the_shipped_example_passes_the_checks():
    cfg = cfgmod.load(Path(__file__).parents[2] / "ops" / "examples" / "one-host.toml", environ={})
    rules.check(cfg.notify)
    assert rules.receivers_for(cfg.notify.rules, "rel-main", "waiting") == ["release-chat", "release-mail", "ci-hook"]
    assert rules.receivers_for(cfg.notify.rules, "dev", "done") == ["ci-hook"]
