"""SSH destinations and option lists, shared by the SSH executor and `p4bus deploy-agent`.

Both drive the system OpenSSH client, so ``~/.ssh/config``, keys and agent forwarding apply.
User and port travel as ``-o User=`` / ``-o Port=`` options rather than ``user@host`` and
``-p``/``-P``, because ssh and scp then take the very same argument list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.config import ConfigError


@dataclass(frozen=True)
class SshDest:
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> SshDest:
        """``ssh://[user@]host[:port]`` or ``[user@]host``; ConfigError naming the value otherwise."""
        url = text if text.startswith("ssh://") else f"ssh://{text}"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{text!r} is not ssh://[user@]host[:port]: {exc}") from None
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"{text!r} is not ssh://[user@]host[:port]")
        return cls(parts.hostname, parts.username or None, port)

    def options(self) -> list[str]:
        out = []
        if self.user:
            out += ["-o", f"User={self.user}"]
        if self.port:
            out += ["-o", f"Port={self.port}"]
        return out

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}{port}"


def option_args(options: Sequence[str]) -> list[str]:
    """``["IdentityFile=/k", "Port=2222"]`` -> ``["-o", "IdentityFile=/k", "-o", "Port=2222"]``."""
    out: list[str] = []
    for opt in options:
        out += ["-o", opt]
    return out
