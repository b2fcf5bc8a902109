"""`p4bus events [--topic PREFIX]... [--since WHEN]`: every event on the bus as JSON lines.

Events the live stream loses (a slow reader's queue overflowed, a tail a beacon shows) are
fetched from the broker's journal and printed in their place (broker/client.py); what cannot
be fetched is named on stderr as it is found, and the command then ends with exit code 3.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from types import FrameType

import click
import msgspec
import zmq

from broker.client import ReplayError, ReplayTimeout, history_then_live
from common.sequence import Gap
from p4bus.cli import Ctx, UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Exit code when events were missing from the output (1 is a failure to run at all).
EXIT_MISSING = 3


@dataclass
class MissingReport:
    """Says each range of events the output lacks, on stderr, as it is found."""

    events: int = 0
    ranges: int = 0

    def __call__(self, gap: Gap, why: str) -> None:
        self.events += gap.count
        self.ranges += 1
        seqs = str(gap.first_missing) if gap.count == 1 else f"{gap.first_missing}-{gap.last_missing}"
        click.echo(
            f"p4bus events: missing {gap.count} {gap.kind} event(s), seq {seqs}, of source {gap.source} "
            f"(publisher {gap.publisher or '-'}, epoch {gap.epoch}): {why}",
            err=True,
        )

    def summary(self) -> str:
        return f"{self.events} event(s) in {self.ranges} range(s) are missing from the output (listed above)"


def _stop_on_term(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # end like Ctrl-C: the summary of what was missing, then the exit code


def parse_since(text: str, now: float | None = None) -> float:
    """'all', a duration ago ('90s', '10m', '2h', '1d'), an ISO time, or a Unix timestamp."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "all":
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 'all', a duration like 10m / 2h / 1d, an ISO time or a Unix timestamp"
        ) from None


@click.command()
@click.option("--topic", "prefixes", multiple=True, help="Topic prefix (repeatable): log. cmd. job.ID agent. ...")
@click.option("--since", default="all", help="History from: 'all' (default), 10m, 2h, 1d, an ISO time, 'now'.")
@click.pass_obj
def events(obj: Ctx, prefixes: tuple[str, ...], since: str) -> None:
    """Journal history, then live events, as JSON lines (bytes fields are base64).

    Each line is the event's body plus ``publisher``: the key the broker authenticated its
    publisher by ("" on an insecure bus). The body's ``source`` is only what the publisher wrote.

    Events lost on the way are fetched from the broker's journal and printed in order; any the
    journal lacks too are named on stderr (source, publisher, seq range), and the command then
    exits with code 3 when it ends (Ctrl-C, SIGTERM, or its reader closing the pipe). Beacons
    are printed only with ``--topic beacon.``."""
    cfg = obj.cfg()
    since_ts = time.time() if since == "now" else parse_since(since)
    enc = msgspec.json.Encoder()
    out = sys.stdout.buffer
    missing = MissingReport()
    signal.signal(signal.SIGTERM, _stop_on_term)
    stream = history_then_live(
        zmq.Context.instance(),
        cfg.broker_xpubs(),
        cfg.broker_replays(),
        obj.security(),
        prefixes or ("",),
        since_ts=since_ts,
        on_missing=missing,
        on_down=lambda broker, why: click.echo(
            f"p4bus: broker {broker} does not answer ({why}); reading the others", err=True
        ),
    )
    try:
        for ev, publisher in stream:
            out.write(enc.encode(msgspec.to_builtins(ev) | {"publisher": publisher}) + b"\n")
            out.flush()
    except (ReplayError, ReplayTimeout) as exc:
        raise UserError(f"broker at {', '.join(cfg.broker_replays())}: {exc} (is `p4bus broker` running?)") from None
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        stream.close()
    if missing.events:
        raise UserError(missing.summary(), exit_code=EXIT_MISSING)


COMMANDS = [events]
