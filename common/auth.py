"""CurveZMQ for p4bus: a process's key pair and keyring (``Security``), the ZAP authenticator
that admits keys by role per domain, and the per-request role check (``Guard``).

The authenticator is pyzmq's own (``zmq.auth``), one per context, started before any server
socket of that context binds: libzmq lets a CURVE handshake through unchecked while no ZAP
handler listens. Its User-Id is the key's NAME in the keyring, so a ROUTER knows which key sent
each message (``zmqutil.routed``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from common import keys, logs, roles
from common import protocol as P
from common.config import KEY_ENV, Config

log = logs.get("auth")


@dataclass(frozen=True)
class Security:
    """This process's key pair and the keyring it authorizes with and pins from."""

    pair: keys.KeyPair
    keyring: keys.Keyring

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Make ``sock`` (not yet bound) a CURVE server whose callers ZAP checks for ``domain``."""
        authenticator(sock.context, self.keyring)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.pair.secret)

    def connect(self, sock: zmq.Socket, server_role: str, endpoint: str) -> None:
        """Make ``sock`` (not yet connected) a CURVE client pinning the key of the ``server_role``
        server on ``endpoint``: anyone else holding that port cannot complete the handshake."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.keyring.server_key(server_role, endpoint))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.pair.secret)

    def role_of(self, name: str) -> str | None:
        entry = self.keyring.get(name)
        return entry.role if entry else None


class KeyringAuthenticator(ThreadAuthenticator):
    """Admits a CURVE key when the keyring (as it is now) gives it a role allowed on the domain."""

    def __init__(self, context: zmq.Context, keyring: keys.Keyring) -> None:
        super().__init__(context, log=None)
        self.keyring = keyring
        for domain in roles.CONNECT:
            self.configure_curve_callback(domain, self)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        entry = self.keyring.by_public(z85_key.decode("ascii", "replace"))
        if entry is not None and roles.may_connect(domain, entry.role):
            return True
        who = (
            f"key {entry.name} (role {entry.role})"
            if entry
            else f"unknown key {z85_key[:8].decode(errors='replace')}..."
        )
        log.warning("connection.refused", domain=domain, who=who)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        entry = self.keyring.by_public(z85.encode(client_public_key).decode())
        return entry.name if entry else ""


_auth_lock = threading.Lock()
_authenticators: dict[int, KeyringAuthenticator] = {}


def authenticator(ctx: zmq.Context, keyring: keys.Keyring) -> KeyringAuthenticator:
    """The context's ZAP handler, started on first use (libzmq allows one per context)."""
    with _auth_lock:
        auth = _authenticators.get(id(ctx))
        if auth is None or auth.context is not ctx:
            auth = _authenticators[id(ctx)] = KeyringAuthenticator(ctx, keyring)
            auth.start()
        return auth


def stop_authenticator(ctx: zmq.Context) -> None:
    """Stop the context's ZAP handler (its sockets would keep ``ctx.term()`` waiting)."""
    with _auth_lock:
        auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


class Guard:
    """The per-request role check of one server socket; None security lets everything through."""

    def __init__(self, security: Security | None, domain: str) -> None:
        self.security = security
        self.domain = domain

    def refusal(self, user: str, msg: P.Base) -> P.ErrorReply | None:
        if self.security is None:
            return None
        tag = str(msg.__struct_config__.tag)
        role = self.security.role_of(user)
        if roles.may_send(self.domain, role, tag):
            return None
        shown = role or "none: not in the keyring"
        log.warning("request.forbidden", key=user, role=shown, request=tag, domain=self.domain)
        return P.ErrorReply(
            req_id=getattr(msg, "req_id", ""), code="forbidden", message=f"key {user} (role {shown}) may not send {tag}"
        )


def _warn_insecure(service: str) -> None:
    log.warning(
        "insecure",
        service=service,
        message="insecure = true: no CURVE, anyone who reaches these sockets may use them (docs/security.md)",
    )


def _load(secret_file: Path, keyring: Path, who: str) -> Security:
    if not secret_file.exists():
        raise keys.KeyringError(
            f"no key pair {secret_file} for {who} (create keys with `p4bus keys init`, "
            "or set insecure = true on a trusted network)"
        )
    return Security(keys.load_pair(secret_file), keys.Keyring(keyring))


def for_service(cfg: Config, service: str, default_name: str) -> Security | None:
    """A service's Security from ``[security]`` (key name default: ``default_name``); None,
    with a warning naming the service, under ``insecure = true``."""
    if cfg.insecure:
        _warn_insecure(service)
        return None
    name = cfg.security.key or default_name
    return _load(keys.secret_path(cfg.keys_path, name), cfg.keyring_path, f"the {service}")


def for_client(cfg: Config, environ: Mapping[str, str] | None = None) -> Security | None:
    """The CLI's Security: the key file P4BUS_KEY names (with the keyring next to it, unless
    ``[security] keyring`` says otherwise), else ``[security] key`` (default ``operator``) in
    the keys directory; None under ``insecure = true``."""
    if cfg.insecure:
        return None
    environ = os.environ if environ is None else environ
    chosen = environ.get(KEY_ENV)
    if not chosen:
        name = cfg.security.key or "operator"
        return _load(keys.secret_path(cfg.keys_path, name), cfg.keyring_path, f"the CLI (or set {KEY_ENV})")
    secret = Path(chosen).expanduser()
    keyring = cfg.keyring_path if cfg.security.keyring else secret.parent / keys.KEYRING_FILE
    return _load(secret, keyring, KEY_ENV)


def user_id(frame: Any) -> str:
    """The authenticated key name of a received frame ("" without CURVE)."""
    try:
        return str(frame.get("User-Id"))
    except (zmq.ZMQError, AttributeError):
        return ""
