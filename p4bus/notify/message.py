"""What a notification says, in each receiver's format. Pure functions of a Notice.

Every format carries the notice's key, the identity of the job event it reports (publisher's
source, epoch and seq: unique per published event, and unlike a journal id it survives a new
journal file): webhooks as ``Idempotency-Key``, mail in its Message-ID. A receiver that sees
the same key twice is seeing a retry of one delivery (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import time
from email.message import EmailMessage
from email.utils import formatdate

import msgspec

from common import protocol as P

# How many conflicting files a message lists; the job page has them all.
MAX_FILES = 50


class Notice(msgspec.Struct, frozen=True):
    key: str
    kind: str  # config.NOTIFY_EVENTS
    job_id: str
    state: str
    stage: str
    workspace: str
    url: str
    ts: float
    reason: str = ""
    key_line: str = ""
    conflicts: list[str] = []
    change: int | None = None
    submitted_change: int | None = None


def event_key(ev: P.EventBase) -> str:
    return f"{ev.source}/{ev.epoch}/{ev.seq}"


def notice(ev: P.JobChanged, kind: str, web_url: str) -> Notice:
    d = ev.detail

    def text(name: str) -> str:
        v = d.get(name)
        return v if isinstance(v, str) else ""

    def number(name: str) -> int | None:
        v = d.get(name)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    files = d.get("conflicts")
    return Notice(
        key=event_key(ev),
        kind=kind,
        job_id=ev.job_id,
        state=ev.state,
        stage=ev.stage,
        workspace=text("workspace"),
        url=f"{web_url}/jobs/{ev.job_id}",
        ts=ev.ts,
        reason=text("reason"),
        key_line=text("key_line"),
        conflicts=[f for f in files if isinstance(f, str)] if isinstance(files, list) else [],
        change=number("change"),
        submitted_change=number("submitted_change"),
    )


def headline(n: Notice) -> str:
    where = f" in {n.workspace}" if n.workspace else ""
    if n.kind == "waiting":
        count = len(n.conflicts)
        files = f": {count} conflicting file{'s' if count != 1 else ''}" if count else ""
        return f"p4bus job {n.job_id} waits for a person{where}{files}"
    if n.kind == "failed":
        return f"p4bus job {n.job_id} failed{where} at {n.stage}" + (f": {n.reason}" if n.reason else "")
    if n.kind == "done":
        change = f", submitted change {n.submitted_change}" if n.submitted_change is not None else ""
        return f"p4bus job {n.job_id} finished{where}: {n.state}{change}"
    return f"p4bus job {n.job_id} was cancelled{where}"


def _facts(n: Notice) -> list[tuple[str, str]]:
    rows = [("Job", n.job_id), ("State", n.state), ("Stage", n.stage), ("Workspace", n.workspace)]
    rows += [("Reason", n.reason), ("Line", n.key_line)]
    rows += [("Pending change", str(n.change) if n.change is not None else "")]
    rows += [("Submitted change", str(n.submitted_change) if n.submitted_change is not None else "")]
    return [(k, v) for k, v in rows if v]


def _files(n: Notice) -> tuple[list[str], int]:
    return n.conflicts[:MAX_FILES], max(0, len(n.conflicts) - MAX_FILES)


def webhook_body(n: Notice) -> bytes:
    """The generic webhook's JSON: every field of the notice, and a one-line summary."""
    return json.dumps({"summary": headline(n), **msgspec.to_builtins(n)}, sort_keys=True).encode()


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn control characters; anything else in p4 text is shown as it is.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(n: Notice) -> bytes:
    """Slack's incoming-webhook format: ``text`` (also the fallback for notifications)."""
    lines = [f"*{_slack_escape(headline(n))}*", f"<{n.url}|Open job {_slack_escape(n.job_id)}>"]
    lines += [f"{k}: {_slack_escape(v)}" for k, v in _facts(n) if k != "Job"]
    files, more = _files(n)
    if files:
        lines.append("Conflicting files:")
        lines += [f"• `{_slack_escape(f)}`" for f in files]
        if more:
            lines.append(f"… and {more} more on the job's page")
    return json.dumps({"text": "\n".join(lines)}).encode()


def text_body(n: Notice) -> str:
    lines = [headline(n), "", *(f"{k + ':':18} {v}" for k, v in _facts(n))]
    files, more = _files(n)
    if files:
        lines += ["", "Conflicting files:", *(f"  {f}" for f in files)]
        if more:
            lines.append(f"  ... and {more} more on the job's page")
    lines += ["", f"Job page: {n.url}"]
    return "\n".join(lines) + "\n"


def message_id(n: Notice, sender: str) -> str:
    """Derived from the notice's key alone, so a retried mail has the Message-ID of the first.
    A digest, not the key itself: short enough never to be folded over two lines."""
    digest = hashlib.sha256(n.key.encode()).hexdigest()[:32]
    domain = sender.rpartition("@")[2] or "p4bus.invalid"
    return f"<{digest}.p4bus@{domain}>"


def email(n: Notice, sender: str, to: list[str], now: float | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = " ".join(headline(n).split())  # a reason's newlines must not end the header
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(time.time() if now is None else now, localtime=False)
    msg["Message-ID"] = message_id(n, sender)
    msg["X-P4bus-Job"] = n.job_id
    msg["X-P4bus-Event"] = n.key
    msg.set_content(text_body(n))
    return msg
