"""Known secret values taken out of command output before it is spooled or published.

The agent knows a secret when a request marks its stdin secret (``stdin_secret``: the
password of ``p4 login``); every line of that stdin is one. From then on every output chunk of
every command has each of them replaced by ``***`` -- in the spool, the LogChunk events (and
so the broker's journal and ``tail``) and the CmdStatus captures alike, so byte offsets stay
consistent: they count the redacted bytes.

A secret split over two chunks is caught by holding back a chunk's tail that is the start of
a secret until the next chunk (or the end of the stream) shows whether it continues. Secrets
live in memory only: a restarted agent learns them again at the next login.
"""

from __future__ import annotations

MASK = b"***"
# Shorter values would mask ordinary text everywhere; a password this short is no secret.
MIN_SECRET = 4
MAX_SECRET = 1024
MAX_SECRETS = 64


def secrets_in(stdin: bytes) -> list[bytes]:
    """The secret values of a secret stdin: its lines, without line ends."""
    lines = (line.rstrip(b"\r") for line in stdin.split(b"\n"))
    return [line for line in lines if MIN_SECRET <= len(line) <= MAX_SECRET]


class Redactor:
    def __init__(self) -> None:
        self.secrets: list[bytes] = []  # the newest last; empty = nothing to do (the hot path)

    def learn(self, stdin: bytes) -> None:
        for value in secrets_in(stdin):
            if value in self.secrets:
                self.secrets.remove(value)
            self.secrets.append(value)
        del self.secrets[:-MAX_SECRETS]

    def apply(self, data: bytes | memoryview, final: bool) -> tuple[bytes, bytes]:
        """(the redacted bytes to emit now, the tail to hold back and offer again in front of
        the next data); nothing is held back when ``final``."""
        out = bytes(data)
        for secret in self.secrets:
            out = out.replace(secret, MASK)
        if final:
            return out, b""
        keep = max((_prefix_at_end(out, s) for s in self.secrets), default=0)
        return (out[:-keep], out[-keep:]) if keep else (out, b"")


def _prefix_at_end(data: bytes, secret: bytes) -> int:
    """The length of the longest proper prefix of ``secret`` that ``data`` ends with."""
    for k in range(min(len(secret) - 1, len(data)), 0, -1):
        if data.endswith(secret[:k]):
            return k
    return 0
