"""common/keys.py: key files and their modes, the keyring's rules, reloading, pinning."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from common import keys, roles
from common.auth import for_client
from common.config import Config
from common.keys import KeyringError


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_create_writes_zmq_certificates_0600_in_a_0700_dir(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    pair = keys.create(d, "agent-1")
    assert _mode(d) == 0o700
    assert _mode(d / "agent-1.key") == 0o600 and _mode(d / "agent-1.key_secret") == 0o600
    public, secret = zmq.auth.load_certificate(str(d / "agent-1.key_secret"))
    assert (pair.public, pair.secret) == (public, secret) and len(public) == 40
    assert keys.load_public(d / "agent-1.key") == public.decode()
    with pytest.raises(KeyringError, match="already exists"):
        keys.create(d, "agent-1")


def test_a_secret_key_others_may_read_is_refused(tmp_path: Path) -> None:
    keys.create(tmp_path, "k")
    secret = tmp_path / "k.key_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(KeyringError, match="mode 644; others may read it"):
        keys.load_pair(secret)
    with pytest.raises(KeyringError, match="no secret key file"):
        keys.load_pair(tmp_path / "missing.key_secret")


@pytest.mark.parametrize("name", ["", "../x", "a b", "-lead", "x" * 129])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyringError, match="not a valid key name"):
        keys.create(tmp_path, name)


def test_authorize_revoke_and_their_refusals(tmp_path: Path) -> None:
    ring = tmp_path / "k" / "keyring.toml"
    a, b = (keys.create(tmp_path, n).public.decode() for n in ("a", "b"))
    keys.authorize(ring, "a", roles.AGENT, a)
    keys.authorize(ring, "a", roles.AGENT, a)  # the same again: nothing changes
    assert _mode(ring) == 0o600
    with pytest.raises(KeyringError, match=r"already authorized .*revoke a"):
        keys.authorize(ring, "a", roles.OPERATOR, a)
    with pytest.raises(KeyringError, match="already authorized as a; one name per key"):
        keys.authorize(ring, "other", roles.VIEWER, a)
    with pytest.raises(KeyringError, match="unknown role 'root'"):
        keys.authorize(ring, "b", "root", b)
    with pytest.raises(KeyringError, match="not a CURVE public key"):
        keys.authorize(ring, "b", roles.VIEWER, "short")
    assert keys.revoke(ring, "a").role == roles.AGENT
    assert keys.read(ring) == {}
    with pytest.raises(KeyringError, match="a is not in the keyring"):
        keys.revoke(ring, "a")


def test_a_broken_keyring_names_the_file_and_the_table(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.toml"
    ring.write_text('[keys.x]\nrole = "agent"\npublic = "nope"\n')
    with pytest.raises(KeyringError, match=r"keyring .*keyring.toml: \[keys.x\]: 'nope' is not a CURVE public key"):
        keys.read(ring)
    ring.write_text("[keys.x\n")
    with pytest.raises(KeyringError, match="is not valid TOML"):
        keys.Keyring(ring)


def test_the_keyring_is_reread_when_it_changes_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.toml"
    pub = keys.create(tmp_path, "op").public.decode()
    live = keys.Keyring(ring)
    assert live.get("op") is None
    keys.authorize(ring, "op", roles.OPERATOR, pub)
    assert live.get("op") is not None and live.by_public(pub).name == "op"  # type: ignore[union-attr]
    ring.write_text("[broken")
    assert live.get("op") is not None and "not valid TOML" in live.error
    ring.unlink()
    assert live.get("op") is None and live.error == ""


def test_init_is_idempotent(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.toml"
    wanted = {"broker": roles.BROKER, "operator": roles.OPERATOR}
    assert keys.init(tmp_path, ring, wanted) == ["broker", "operator"]
    before = ring.read_text()
    assert keys.init(tmp_path, ring, wanted) == []
    assert ring.read_text() == before


def test_pinning_picks_the_server_key_for_the_endpoint(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.toml"
    m1, m2, m3 = (keys.create(tmp_path, n).public.decode() for n in ("m1", "m2", "m3"))
    live = keys.Keyring(ring)
    with pytest.raises(KeyringError, match=r"no master key .* to pin for tcp://h1:9090"):
        live.server_key(roles.MASTER, "tcp://h1:9090")
    keys.authorize(ring, "m1", roles.MASTER, m1)
    assert live.server_key(roles.MASTER, "tcp://anywhere:1") == m1.encode()
    keys.authorize(ring, "m2", roles.MASTER, m2, ["tcp://h2:9090"])
    assert live.server_key(roles.MASTER, "tcp://h2:9090") == m2.encode()
    assert live.server_key(roles.MASTER, "tcp://h1:9090") == m1.encode()  # the one that lists none
    keys.authorize(ring, "m3", roles.MASTER, m3)
    with pytest.raises(KeyringError, match=r"several master keys .* could answer on tcp://h1:9090 \(m1, m3\)"):
        live.server_key(roles.MASTER, "tcp://h1:9090")


def test_the_cli_key_comes_from_p4bus_key_with_the_keyring_beside_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "mine"
    pair = keys.create(elsewhere, "alice")
    cfg = Config(state_dir=str(tmp_path / "state"))
    sec = for_client(cfg, {"P4BUS_KEY": str(elsewhere / "alice.key_secret")})
    assert sec is not None and sec.pair == pair and sec.keyring.path == elsewhere / "keyring.toml"
    with pytest.raises(KeyringError, match=r"no key pair .*state/keys/operator.key_secret .*p4bus keys init"):
        for_client(cfg, {})
    assert for_client(Config(insecure=True), {}) is None


def test_security_settings_from_the_environment_and_p4bus_key_is_not_a_setting(tmp_path: Path) -> None:
    from common.config import load

    cfg = load(environ={"P4BUS_SECURITY_KEYS_DIR": str(tmp_path / "k"), "P4BUS_KEY": "/x/op.key_secret"})
    assert (cfg.keys_path, cfg.keyring_path) == (tmp_path / "k", tmp_path / "k" / "keyring.toml")
    cfg = load(environ={"P4BUS_STATE_DIR": str(tmp_path), "P4BUS_SECURITY_KEYRING": "/etc/p4bus/ring.toml"})
    assert (cfg.keys_path, cfg.keyring_path) == (tmp_path / "keys", Path("/etc/p4bus/ring.toml"))
