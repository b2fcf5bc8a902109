"""Who is asking: a session made by logging in with a token, or a trusted reverse proxy's header.

Sessions live in this process only (random ids, nothing signed to forge); a restart logs
everybody out. Each session has its own CSRF token, which every action must carry: the cookie
alone (SameSite=Strict, HttpOnly) never suffices to act.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from common.config import WebConf
from p4bus.web.tokens import Person, TokenError, TokenFile, check_role

COOKIE = "p4bus_session"


@dataclass
class Session:
    person: Person
    csrf: str
    expires: float
    via_header: bool = False


class People:
    def __init__(self, conf: WebConf, tokens: TokenFile) -> None:
        self.conf = conf
        self.tokens = tokens
        self.sessions: dict[str, Session] = {}
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in conf.trusted_proxies]
        for user, role in conf.users.items():
            try:
                check_role(role)
            except TokenError as exc:
                raise TokenError(f"web.users.{user}: {exc}") from None

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for the token's holder, or None for a token nobody holds."""
        person = self.tokens.person(token.strip())
        return None if person is None else self._new(person)

    def _new(self, person: Person, via_header: bool = False) -> tuple[str, Session]:
        self._expire()
        sid = secrets.token_urlsafe(32)
        s = self.sessions[sid] = Session(
            person, secrets.token_urlsafe(32), time.monotonic() + self.conf.session_ttl_s, via_header
        )
        return sid, s

    def logout(self, sid: str | None) -> None:
        if sid:
            self.sessions.pop(sid, None)

    def session(self, sid: str | None, peer: str | None, headers: dict[str, str]) -> tuple[str, Session] | None:
        """The caller's session: the trusted header wins when the request comes from a trusted
        proxy (a new session when the cookie's is someone else's); else the cookie's session,
        while it is fresh and its token unrevoked."""
        user = self.header_user(peer, headers)
        s = self.sessions.get(sid or "")
        if user is not None:
            if s is not None and s.via_header and s.person.name == user.name and s.expires > time.monotonic():
                return str(sid), s
            return self._new(user, via_header=True)
        if s is None:
            return None
        if s.expires <= time.monotonic() or s.via_header or not self.tokens.holds(s.person):
            self.sessions.pop(str(sid), None)
            return None
        return str(sid), s

    def header_user(self, peer: str | None, headers: dict[str, str]) -> Person | None:
        """The person a trusted proxy names, if this request came from one and names a known person."""
        name = self.conf.trusted_header
        if not name or peer is None or not self.proxies:
            return None
        value = headers.get(name.lower())
        if not value:
            return None
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return None
        if not any(addr in net for net in self.proxies):
            return None
        role = self.conf.users.get(value)
        return Person(value, role) if role else None

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[sid]


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf, str(given))
