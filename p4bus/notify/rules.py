"""Which job events become notifications, and for whom. Pure functions over the settings."""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from common.config import ConfigError, NotifyConf, NotifyReceiver, NotifyRule
from orchestrator.pipeline.transition import JobState

# Job state -> the event kind a rule names (config.NOTIFY_EVENTS).
STATE_EVENTS: dict[str, str] = {
    JobState.WAITING_RESOLVE: "waiting",
    JobState.FAILED: "failed",
    JobState.DONE: "done",
    JobState.NOTHING_TO_DO: "done",
    JobState.CANCELLED: "cancelled",
}


def news(previous_state: str | None, state: str) -> str | None:
    """The event kind of a job reaching ``state`` from ``previous_state``, or None when nobody
    is to be told: the state is not one people wait for, or the job was in it already (the
    orchestrator publishes a job again on every change, e.g. a re-check that finds the same
    conflict)."""
    if state == previous_state:
        return None
    return STATE_EVENTS.get(state)


def receivers_for(rules: list[NotifyRule], workspace: str, kind: str) -> list[str]:
    """The receivers of every rule matching ``workspace`` and ``kind``, each once, in rule order."""
    out: list[str] = []
    for rule in rules:
        if kind in rule.events and any(fnmatchcase(workspace, pattern) for pattern in rule.workspaces):
            out.extend(r for r in rule.receivers if r not in out)
    return out


def check(conf: NotifyConf) -> None:
    """ConfigError naming the first setting in ``[notify]`` that cannot work."""
    for i, rule in enumerate(conf.rules):
        for name in rule.receivers:
            if name not in conf.receivers:
                known = ", ".join(sorted(conf.receivers)) or "none"
                raise ConfigError(
                    f"notify.rules[{i}] names receiver {name!r}, which [notify.receivers] does not define "
                    f"(defined: {known})"
                )
    for name, rcv in conf.receivers.items():
        _check_receiver(f"notify.receivers.{name}", rcv)
    if conf.web_url:
        _check_url("notify.web_url", conf.web_url)


def _check_receiver(where: str, rcv: NotifyReceiver) -> None:
    if rcv.kind in ("webhook", "slack"):
        _check_url(f"{where}.url", rcv.url)
        return
    missing = [f for f in ("smtp_host", "sender") if not getattr(rcv, f)] + ([] if rcv.to else ["to"])
    if missing:
        raise ConfigError(f"{where} (kind email) needs {', '.join(missing)}")
    if bool(rcv.username) != bool(rcv.password_file):
        raise ConfigError(f"{where}: username and password_file go together (the SMTP login); set both or neither")


def _check_url(where: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} = {url!r} is not an http:// or https:// URL")
