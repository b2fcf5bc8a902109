"""Key pairs and the keyring (docs/security.md).

Key pairs are zmq.auth certificates: ``<keys_dir>/<name>.key`` (public) and
``<keys_dir>/<name>.key_secret`` (secret). The keyring is one TOML file, one table per key::

    [keys.agent-1]
    role = "agent"
    public = "<Z85, 40 characters>"
    endpoints = []          # servers only: the endpoints this key answers on

Servers authorize callers with it and clients find in it the server keys they pin. It is
re-read whenever it changes on disk, so an authorization or a revocation needs no restart.
Every file is 0600 in a 0700 directory; writes go to a temporary file renamed into place, so
a reader never sees half a keyring.
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli_w
import zmq.auth

from common import roles
from common.config import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
Z85_RE = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
KEYRING_FILE = "keyring.toml"


class KeyringError(ConfigError):
    """A missing, unreadable or inconsistent key or keyring; the message says how to fix it."""


@dataclass(frozen=True)
class KeyPair:
    name: str
    public: bytes  # Z85
    secret: bytes  # Z85


@dataclass(frozen=True)
class Entry:
    name: str
    role: str
    public: str  # Z85
    endpoints: tuple[str, ...] = ()


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise KeyringError(
            f"{name!r} is not a valid key name (letters, digits, '_', '.', '@', '-'; up to 128 characters)"
        )
    return name


def check_role(role: str) -> str:
    if role not in roles.ROLES:
        raise KeyringError(f"unknown role {role!r} (one of: {', '.join(roles.ROLES)})")
    return role


def check_public(public: str) -> str:
    if not Z85_RE.match(public):
        raise KeyringError(f"{public!r} is not a CURVE public key (40 Z85 characters, as `p4bus keys show` prints)")
    return public


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def secret_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{check_name(name)}.key_secret"


def public_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{check_name(name)}.key"


def create(keys_dir: Path, name: str) -> KeyPair:
    """A new key pair NAME in ``keys_dir``; an existing one is never overwritten."""
    if secret_path(keys_dir, name).exists() or public_path(keys_dir, name).exists():
        raise KeyringError(f"key {name} already exists in {keys_dir} (show it with `p4bus keys show {name}`)")
    private_dir(keys_dir)
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        public_file, secret_file = zmq.auth.create_certificates(str(keys_dir), name)
    finally:
        os.umask(old)
    for f in (public_file, secret_file):
        os.chmod(f, 0o600)
    return load_pair(Path(secret_file))


def load_pair(secret_file: Path) -> KeyPair:
    """The key pair in a ``.key_secret`` file, refused when others may read it."""
    if not secret_file.is_file():
        raise KeyringError(f"no secret key file {secret_file} (create keys with `p4bus keys init` or `keys create`)")
    mode = secret_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyringError(f"secret key file {secret_file} is mode {mode:o}; others may read it (chmod 600 it)")
    try:
        public, secret = zmq.auth.load_certificate(str(secret_file))
    except (ValueError, OSError) as exc:
        raise KeyringError(f"cannot read key file {secret_file}: {exc}") from None
    if secret is None:
        raise KeyringError(f"{secret_file} holds no secret key")
    name = secret_file.name.removesuffix(".key_secret")
    return KeyPair(name, public, secret)


def load_public(public_file: Path) -> str:
    try:
        public, _ = zmq.auth.load_certificate(str(public_file))
    except (ValueError, OSError) as exc:
        raise KeyringError(
            f"cannot read public key {public_file}: {exc} (create it with `p4bus keys create`)"
        ) from None
    return public.decode()


# ---------------------------------------------------------------------- keyring file


def parse(text: str, where: str) -> dict[str, Entry]:
    """The entries of a keyring's TOML text; ``where`` names the file in errors."""
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyringError(f"keyring {where} is not valid TOML: {exc}") from None
    out: dict[str, Entry] = {}
    keys = tree.get("keys", {})
    if not isinstance(keys, dict):
        raise KeyringError(f"keyring {where}: [keys] must be a table of tables")
    for name, t in keys.items():
        if not isinstance(t, dict) or set(t) - {"role", "public", "endpoints"}:
            raise KeyringError(f"keyring {where}: [keys.{name}] takes role, public and endpoints only")
        try:
            endpoints = tuple(str(e) for e in t.get("endpoints", []))
            out[name] = Entry(
                check_name(name), check_role(str(t.get("role"))), check_public(str(t.get("public"))), endpoints
            )
        except KeyringError as exc:
            raise KeyringError(f"keyring {where}: [keys.{name}]: {exc}") from None
    return out


def render(entries: Mapping[str, Entry]) -> str:
    tree = {
        "keys": {
            e.name: {"role": e.role, "public": e.public, "endpoints": list(e.endpoints)}
            for e in sorted(entries.values(), key=lambda e: e.name)
        }
    }
    return tomli_w.dumps(tree)


def read(path: Path) -> dict[str, Entry]:
    if not path.exists():
        return {}
    return parse(path.read_text(), str(path))


def write(path: Path, entries: Mapping[str, Entry]) -> None:
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render(entries))
    os.replace(tmp, path)


def authorize(path: Path, name: str, role: str, public: str, endpoints: Iterable[str] = ()) -> Entry:
    """Add NAME to the keyring; the same NAME with another key or role must be revoked first."""
    entry = Entry(check_name(name), check_role(role), check_public(public), tuple(endpoints))
    entries = read(path)
    old = entries.get(name)
    if old is not None and old != entry:
        raise KeyringError(
            f"{name} is already authorized (role {old.role}, key {old.public[:8]}...); "
            f"`p4bus keys revoke {name}` first to replace it"
        )
    same_key = next((e for e in entries.values() if e.public == public and e.name != name), None)
    if same_key is not None:
        raise KeyringError(f"that public key is already authorized as {same_key.name}; one name per key")
    entries[name] = entry
    write(path, entries)
    return entry


def revoke(path: Path, name: str) -> Entry:
    entries = read(path)
    if name not in entries:
        raise KeyringError(f"{name} is not in the keyring {path} (see `p4bus keys list`)")
    gone = entries.pop(name)
    write(path, entries)
    return gone


def init(keys_dir: Path, keyring_path: Path, wanted: Mapping[str, str]) -> list[str]:
    """Create every missing key pair of ``wanted`` (name -> role) and authorize it; returns
    the names that were new. Running it again changes nothing."""
    made = []
    for name, role in wanted.items():
        if not secret_path(keys_dir, name).exists():
            create(keys_dir, name)
            made.append(name)
        pair = load_pair(secret_path(keys_dir, name))
        if keyring_path.exists() and name in read(keyring_path):
            continue
        authorize(keyring_path, name, role, pair.public.decode())
    return made


class Keyring:
    """The keyring file as it is now: re-read whenever its mtime, size or inode changes.

    A file that turns unreadable after start-up keeps the last good entries (and ``error`` says
    why): a service must not lock everybody out because of a half-edited file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error = ""
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, Entry] = {}
        self._by_public: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._refresh(strict=True)

    def _refresh(self, strict: bool = False) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                entries = read(self.path) if stamp != (0, 0, 0) else {}
            except KeyringError as exc:
                if strict:
                    raise
                self.error = str(exc)
                return
            self._entries = entries
            self._by_public = {e.public: e for e in entries.values()}
            self._stamp = stamp
            self.error = ""

    def entries(self) -> dict[str, Entry]:
        self._refresh()
        return self._entries

    def get(self, name: str) -> Entry | None:
        return self.entries().get(name)

    def by_public(self, public: str) -> Entry | None:
        self._refresh()
        return self._by_public.get(public)

    def server_key(self, role: str, endpoint: str) -> bytes:
        """The public key to pin for a server of ``role`` answering on ``endpoint``."""
        found = [e for e in self.entries().values() if e.role == role]
        if len(found) > 1:
            # The one that lists the endpoint; else the one that lists none (answers anywhere).
            found = [e for e in found if endpoint in e.endpoints] or [e for e in found if not e.endpoints]
            if len(found) != 1:
                raise KeyringError(
                    f"several {role} keys in {self.path} could answer on {endpoint} "
                    f"({', '.join(e.name for e in found) or 'none lists it'}); give each its endpoints "
                    f"(`p4bus keys revoke NAME`, then `p4bus keys authorize NAME --role {role} --endpoint ...`)"
                )
        if not found:
            raise KeyringError(
                f"no {role} key in the keyring {self.path} to pin for {endpoint} (authorize it with "
                f"`p4bus keys authorize NAME --role {role} --public KEY`, or run `p4bus keys init`)"
            )
        return found[0].public.encode()
