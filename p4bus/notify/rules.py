"""Which job events become notifications, and for whom. Pure functions over the settings."""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from common.config import ConfigError, NotifyConf, NotifyReceiver, NotifyRule, read_password_file
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
        if bool(rcv.url) == bool(rcv.url_file):
            raise ConfigError(
                f"{where} (kind {rcv.kind}) needs url or url_file (a 0600 file holding the URL), one of them"
            )
        if rcv.url:
            _check_url(f"{where}.url", rcv.url)
        return
    missing = [f for f in ("smtp_host", "sender") if not getattr(rcv, f)] + ([] if rcv.to else ["to"])
    if missing:
        raise ConfigError(f"{where} (kind email) needs {', '.join(missing)}")
    if rcv.url or rcv.url_file:
        raise ConfigError(f"{where} (kind email) has url/url_file, which only webhooks have; remove it")
    if bool(rcv.username) != bool(rcv.password_file):
        raise ConfigError(f"{where}: username and password_file go together (the SMTP login); set both or neither")


def check_url_file(where: str, rcv: NotifyReceiver) -> None:
    """The URL in ``url_file`` is one (the file itself is checked as it is read)."""
    if rcv.url_file:
        _check_url(f"{where}.url_file {rcv.url_file}", webhook_url(rcv))


def webhook_url(rcv: NotifyReceiver) -> str:
    """A webhook's URL, read from ``url_file`` at every call when it is given there, so a
    rotated secret is used without a restart."""
    return rcv.url or read_password_file(rcv.url_file).strip()


def _check_url(where: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The URL may be a secret (url_file): only its scheme and host are named.
        raise ConfigError(
            f"{where}: {parts.scheme or 'no scheme'}://{parts.hostname or ''}... is not an http:// or https:// URL"
        )
