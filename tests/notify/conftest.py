"""The notifier as a process against a real broker, job events published under the
orchestrator's key (as the orchestrator does), and real receivers (receivers.py)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from broker.client import ReplayClient
from common import ids, zmqutil
from common import protocol as P
from common.publisher import Publisher
from p4bus.harness.stack import ServiceProc
from tests.conftest import Stack, wait_for
from tests.notify.receivers import HttpReceiver, SmtpReceiver, self_signed

WEB_URL = "https://p4bus.example.com/dash"


class NotifyStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tmp = stack.tmp
        self.db = self.tmp / "state" / "notify.db"
        self.ctx = zmq.Context()
        self.pubs: dict[str, Publisher] = {}
        self.probes = 0
        # The replay endpoints an event must be journalled in before publish() returns (the
        # brokers up); default: the one broker.
        self.journals: list[str] = []
        stack.tree["notify"] = {
            "web_url": WEB_URL,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            "receivers": {},
            "rules": [],
        }

    # ------------------------------------------------------------------ settings
    def receiver(self, name: str, **conf: Any) -> None:
        self.stack.tree["notify"]["receivers"][name] = conf

    def rule(self, receivers: list[str], **conf: Any) -> None:
        self.stack.tree["notify"]["rules"].append({"receivers": receivers, **conf})

    # ------------------------------------------------------------------ processes
    def start_broker(self) -> None:
        self.stack.start("broker")

    def start_brokers(self, n: int) -> None:
        """``n`` replicated brokers, each journalling every event (the first is ``broker``)."""
        for name, extra in self.stack.replicate_brokers(n).items():
            self.stack.start("broker", name=name, extra=extra)
        self.journals = self.stack.config().broker_replays()

    def start_notifier(self) -> ServiceProc:
        """Start (or start again) the notifier; returns once it has its journal cursor, so
        every event published from then on is news to it."""
        proc = self.stack.restart("notify") if "notify" in self.stack.current() else self.stack.start("notify")
        wait_for(lambda: self._alive_and(self.cursor), 20, "the notifier's journal cursor", 0.05)
        return proc

    def _alive_and(self, pred: Any) -> Any:
        self.stack.check_alive()
        return pred() is not None

    # ------------------------------------------------------------------ events
    def publish(self, job_id: str, state: str, key: str = "orchestrator", stage: str = "", **detail: Any) -> str:
        """Publish a JobChanged as ``key`` and wait until the broker journalled it; the
        notice key the notifier gives it."""
        pub = self._publisher(key)
        ev = pub.publish(P.JobChanged, f"job.{job_id}", job_id=job_id, state=state, stage=stage, detail=detail)
        wait_for(lambda: self._journalled(ev), 20, f"job event {job_id} {state} in the journal", 0.05)
        return f"{ev.source}/{ev.epoch}/{ev.seq}"

    def _publisher(self, key: str) -> Publisher:
        if key not in self.pubs:
            sec = self.stack.security(key, "agent" if key != "orchestrator" else None)
            xsubs = self.stack.config().broker_xsubs()
            pub = Publisher(zmqutil.pub(self.ctx, xsubs, sec), f"{key}-test", ids.new_id())
            self.pubs[key] = pub
            self.connected(key)
        return self.pubs[key]

    def connected(self, key: str = "orchestrator") -> None:
        """PUB drops what it sends before it is connected (again, to a broker that restarted):
        probe until a probe is journalled by every broker in ``journals``."""
        pub = self.pubs[key]
        wait_for(lambda: self._journalled(self._probe(pub)), 20, "the test publisher's connection", 0.1)

    def _probe(self, pub: Publisher) -> P.JobChanged:
        self.probes += 1
        return pub.publish(P.JobChanged, "job.probe", job_id="probe", state=f"PROBE-{self.probes}")

    def _journalled(self, ev: P.JobChanged) -> bool:
        return all(
            self._journalled_in(replay, ev) for replay in self.journals or [self.stack.endpoint("broker_replay")]
        )

    def _journalled_in(self, endpoint: str, ev: P.JobChanged) -> bool:
        with ReplayClient(self.ctx, endpoint, self.stack.security()) as replay:
            for page in replay.pages(ev.topic):
                for _id, _topic, body in page:
                    got = P.decode(body, P.Event)
                    if (got.source, got.epoch, got.seq) == (ev.source, ev.epoch, ev.seq):
                        return True
        return False

    # ------------------------------------------------------------------ the notifier's state file
    def _query(self, sql: str, *args: Any) -> list[tuple]:
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as db:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.OperationalError:
                return []  # the notifier has not made its tables yet

    def cursor(self) -> int | None:
        """The first broker's journal cursor (None until the notifier has read that journal)."""
        return self.cursors().get(self.stack.config().bus_brokers()[0].replay)

    def cursors(self) -> dict[str, int]:
        """Broker (replay endpoint) -> the notifier's journal cursor in it."""
        return dict(self._query("SELECT broker, journal_id FROM cursors"))

    def outbox(self, key: str) -> dict[str, tuple[str, int]]:
        """receiver -> (state, attempts) of notice ``key``."""
        return {r: (s, a) for r, s, a in self._query("SELECT receiver, state, attempts FROM outbox WHERE key = ?", key)}

    def last_error(self, key: str, receiver: str) -> str:
        rows = self._query("SELECT last_error FROM outbox WHERE key = ? AND receiver = ?", key, receiver)
        return rows[0][0] if rows else ""

    def wait_outbox(self, key: str, receiver: str, pred: Any, what: str, timeout: float = 20.0) -> tuple[str, int]:
        def check() -> tuple[str, int] | None:
            self.stack.check_alive()
            row = self.outbox(key).get(receiver)
            return row if row is not None and pred(*row) else None

        return wait_for(check, timeout, f"{receiver}'s notice {key}: {what}", 0.05)

    def log_lines(self, name: str = "notify") -> list[str]:
        return [
            line
            for p in self.stack.procs
            if p.name == name and os.path.exists(p.log_path)
            for line in p.log_path.read_text().splitlines()
        ]

    def close(self) -> None:
        for pub in self.pubs.values():
            pub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def notify(stack: Stack) -> Iterator[NotifyStack]:
    ns = NotifyStack(stack)
    yield ns
    stack.stop_all()
    ns.close()


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver().up()
    yield r
    r.close()


@pytest.fixture
def smtp(tmp_path) -> Iterator[SmtpReceiver]:
    r = SmtpReceiver(self_signed(tmp_path), "notifier", "s3cret-pw").up()
    yield r
    r.close()


def secret_file(dir, secret: str, mode: int = 0o600, name: str = "smtp-password"):
    path = dir / name
    path.write_text(secret + "\n")
    os.chmod(path, mode)
    return path


def mail_receiver(notify: NotifyStack, smtp: SmtpReceiver, tmp_path, **overrides: Any) -> None:
    """The receiver "mail": email through the test's SMTP server (its CA, a 0600 password file)."""
    settings: dict[str, Any] = {
        "kind": "email",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "ca_file": str(smtp.tls.cert),
        "username": smtp.user,
        "password_file": str(secret_file(tmp_path, smtp.password)),
        "sender": "p4bus@build.example.com",
        "to": ["release@example.com"],
    }
    notify.receiver("mail", **{**settings, **overrides})
