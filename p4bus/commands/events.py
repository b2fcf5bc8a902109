"""`p4bus events [--topic PREFIX]... [--since WHEN]`: every event on the bus as JSON lines."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime

import click
import msgspec
import zmq

from broker.client import ReplayError, ReplayTimeout, history_then_live
from p4bus.cli import Ctx, UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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
    publisher by ("" on an insecure bus). The body's ``source`` is only what the publisher wrote."""
    cfg = obj.cfg()
    since_ts = time.time() if since == "now" else parse_since(since)
    enc = msgspec.json.Encoder()
    out = sys.stdout.buffer
    stream = history_then_live(
        zmq.Context.instance(),
        cfg.endpoint("broker_xpub"),
        cfg.endpoint("broker_replay"),
        obj.security(),
        prefixes or ("",),
        since_ts=since_ts,
    )
    try:
        for ev, publisher in stream:
            out.write(enc.encode(msgspec.to_builtins(ev) | {"publisher": publisher}) + b"\n")
            out.flush()
    except (ReplayError, ReplayTimeout) as exc:
        raise UserError(f"broker at {cfg.endpoint('broker_replay')}: {exc} (is `p4bus broker` running?)") from None
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        stream.close()


COMMANDS = [events]
