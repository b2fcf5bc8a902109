"""Login tokens for the dashboard: created by `p4bus web token add`, stored hashed.

The file (``[web] tokens_file``, default ``<state_dir>/web-tokens.json``) maps a person's name to
their role and the SHA-256 of their token. A token is 32 random bytes, so a plain hash is as
good as a slow one: nobody can guess a preimage. The file is 0600, written to a temporary file
and renamed, and re-read by the web process when it changes, so a revocation takes effect at
the person's next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from common import roles

PEOPLE_ROLES = (roles.VIEWER, roles.OPERATOR)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(ValueError):
    """A bad name, role or tokens file; the message says what and how to fix it."""


@dataclass(frozen=True)
class Person:
    name: str
    role: str

    @property
    def may_act(self) -> bool:
        return self.role == roles.OPERATOR


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TokenError(f"bad name {name!r}: letters, digits and . _ @ - only, at most 64 characters")
    return name


def check_role(role: str) -> str:
    if role not in PEOPLE_ROLES:
        raise TokenError(f"unknown role {role!r} (one of: {', '.join(PEOPLE_ROLES)})")
    return role


class TokenFile:
    """The tokens file; every method re-reads it if it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, dict[str, object]] = {}

    def entries(self) -> dict[str, dict[str, object]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            if st.st_mode & 0o077:
                raise TokenError(f"tokens file {self.path} may be read by others: chmod 600 {self.path}")
            try:
                data = json.loads(self.path.read_text())
                people = data["people"]
                if not isinstance(people, dict):
                    raise TypeError("people is not a table")
            except (ValueError, KeyError, TypeError) as exc:
                raise TokenError(f"tokens file {self.path} is not valid ({exc}): fix or remove it") from None
            self._stamp, self._entries = stamp, people
        return self._entries

    def person(self, token: str) -> Person | None:
        """Whose token this is, or None. Every entry is compared, in constant time each."""
        digest = _digest(token)
        found = None
        for name, entry in self.entries().items():
            if hmac.compare_digest(str(entry.get("sha256", "")), digest):
                found = Person(name, str(entry.get("role")))
        return found

    def holds(self, person: Person) -> bool:
        """The person still has a token with that role (a session ends when it is revoked)."""
        entry = self.entries().get(person.name)
        return entry is not None and entry.get("role") == person.role

    def add(self, name: str, role: str) -> str:
        """A new token for ``name`` (replacing an earlier one); returns it: it is shown once."""
        people = dict(self.entries())
        token = secrets.token_urlsafe(32)
        people[check_name(name)] = {"role": check_role(role), "sha256": _digest(token), "created": time.time()}
        self._write(people)
        return token

    def revoke(self, name: str) -> None:
        people = dict(self.entries())
        if people.pop(name, None) is None:
            raise TokenError(f"no token named {name!r} (see `p4bus web token list`)")
        self._write(people)

    def _write(self, people: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump({"people": people}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        self._stamp = None
