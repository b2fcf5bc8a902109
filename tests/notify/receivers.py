"""Real receivers for the notifier's tests: an HTTP server (stdlib, in a thread) that records
each POST and can be down or hang, and an SMTP server (aiosmtpd) that requires STARTTLS with a
self-signed certificate made here and AUTH LOGIN."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.zmqutil import free_port
from p4bus.harness.stack import wait_for


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class HttpReceiver:
    """Records every POST; ``down()`` stops listening (connections are refused), ``up()``
    listens again on the same port; while ``hang`` is set a request is answered only when
    ``release`` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[Post] = []
        self.cond = threading.Condition()
        self.hang = threading.Event()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.status = 200  # what every POST is answered with

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def up(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.cond:
                    receiver.posts.append(Post(self.path, dict(self.headers.items()), body))
                    receiver.cond.notify_all()
                if receiver.hang.is_set():
                    receiver.release.wait(120)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        self.release.set()
        self.down()

    def wait_posts(self, n: int, timeout: float = 20.0) -> list[Post]:
        """Until at least ``n`` POSTs arrived; all of them."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.posts) >= n, timeout):
                raise AssertionError(f"{self.url()} got {len(self.posts)} POSTs within {timeout}s, wanted {n}")
            return list(self.posts)

    def keys(self) -> list[str]:
        with self.cond:
            return [p.headers["Idempotency-Key"] for p in self.posts]


@dataclass
class Tls:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def self_signed(dir: Path, host: str = "127.0.0.1") -> Tls:
    """A certificate for ``host`` signed by itself: the one CA the notifier is told to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p4bus test SMTP")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    tls = Tls(dir / "smtp-cert.pem", dir / "smtp-key.pem")
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tls


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: Message
    login: str
    mechanism: str


@dataclass
class SmtpReceiver:
    """aiosmtpd on loopback: STARTTLS required before anything else, AUTH LOGIN only, one user."""

    tls: Tls
    user: str
    password: str
    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    controller: Controller | None = None

    def up(self) -> SmtpReceiver:
        receiver = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                login, mechanism = session.auth_data
                receiver.mails.append(
                    Mail(
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        message_from_bytes(envelope.content, policy=policy.default),
                        login,
                        mechanism,
                    )
                )
                return "250 OK"

        def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == self.user
                and data.password.decode() == self.password
            )
            return AuthResult(success=ok, handled=False, auth_data=(data.login.decode(), mechanism) if ok else None)

        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=self.tls.server_context(),
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=["PLAIN"],
            authenticator=authenticator,
        )
        self.controller.start()
        return self

    def close(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def wait_mails(self, n: int, timeout: float = 20.0) -> list[Mail]:
        return wait_for(lambda: list(self.mails) if len(self.mails) >= n else None, timeout, f"{n} mails", 0.05)
