import json

import pytest

from common import config as C

pytestmark = pytest.mark.timeout(10)


def test_defaults_derive_endpoints_from_port_base():
    cfg = C.load(environ={})
    assert cfg.endpoint("master_agents") == "tcp://127.0.0.1:9090"
    assert cfg.endpoint("broker_replay") == "tcp://127.0.0.1:9094"
    assert cfg.agent_masters() == ["tcp://127.0.0.1:9090"]


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port_base = 7000\n[agent]\nslots = 2\npools = ["a"]\n[master]\nheartbeat_s = 3\n')
    env = {"P4BUS_AGENT_SLOTS": "5", "P4BUS_PORT_BASE": "7100"}
    cfg = C.load(f, overrides={"port_base": 7200}, environ=env)
    assert cfg.port_base == 7200  # flag beats env beats file
    assert cfg.agent.slots == 5  # env beats file
    assert cfg.agent.pools == ["a"]  # file beats default
    assert cfg.master.heartbeat_s == 3
    assert C.load(f, environ=env).port_base == 7100


def test_config_env_var_names_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("log_level = 'debug'\n")
    assert C.load(environ={"P4BUS_CONFIG": str(f)}).log_level == "debug"


def test_env_lists_and_json():
    cfg = C.load(environ={"P4BUS_AGENT_MASTERS": "tcp://a:1, tcp://b:2", "P4BUS_AGENT_LABELS": '{"os": "linux"}'})
    assert cfg.agent.masters == ["tcp://a:1", "tcp://b:2"]
    assert cfg.agent.labels == {"os": "linux"}


@pytest.mark.parametrize(
    "setup,needle",
    [
        (lambda p: {"environ": {"P4BUS_NOPE": "1"}}, "P4BUS_NOPE is not a p4bus setting"),
        (lambda p: {"path": p / "missing.toml", "environ": {}}, "does not exist"),
        (lambda p: {"path": _write(p, "x = [\n"), "environ": {}}, "not valid TOML"),
        (lambda p: {"path": _write(p, "[agent]\nslots = 'many'\n"), "environ": {}}, "agent.slots"),
        (lambda p: {"path": _write(p, "[agent]\nslotz = 1\n"), "environ": {}}, "slotz"),
    ],
)
def test_errors_are_precise(tmp_path, setup, needle):
    with pytest.raises(C.ConfigError) as err:
        C.load(**setup(tmp_path))
    assert needle in str(err.value)


def _write(p, text):
    f = p / "bad.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize("name", ["one-host.toml", "multi-host-master.toml", "multi-host-agent.toml"])
def test_shipped_example_configs_load(name):
    from pathlib import Path

    import msgspec

    from orchestrator.pipeline import SiteConfig, validate_site

    cfg = C.load(Path(__file__).parents[2] / "ops" / "examples" / name, environ={})
    assert cfg.agent.id or cfg.orchestrator.workspaces
    assert validate_site(msgspec.convert(cfg.orchestrator.site, SiteConfig, strict=False)) == []


def test_production_allowlist_has_no_simulator_knobs():
    # p4sim's fault injection is added by the stacks that test failures (agent.env_allowlist).
    assert not [name for name in C.DEFAULT_ENV_ALLOWLIST if name.startswith("P4SIM_")]
    assert not [name for name in C.AgentConf().env_allowlist if name.startswith("P4SIM_")]


def test_deep_merge_merges_tables_and_replaces_labels_whole():
    base = {"agent": {"slots": 2, "labels": {"os": "linux", "gpu": "yes"}, "workspaces": {"a": "/a"}}, "x": 1}
    over = {"agent": {"labels": {"os": "mac"}, "workspaces": {"b": "/b"}}, "x": {"y": 2}}
    merged = C.deep_merge(base, over)
    assert merged == {
        "agent": {"slots": 2, "labels": {"os": "mac"}, "workspaces": {"a": "/a", "b": "/b"}},
        "x": {"y": 2},
    }
    assert base["agent"]["workspaces"] == {"a": "/a"}  # neither input is changed


def test_read_tree_layers_before_validation(tmp_path):
    f = _write(tmp_path, "[agent]\nslots = 2\n")
    tree = C.read_tree(f, overrides={"port_base": 7000, "log_level": None}, environ={"P4BUS_AGENT_ID": "a"})
    assert tree == {"agent": {"slots": 2, "id": "a"}, "port_base": 7000}
    assert C.from_tree(tree).agent.id == "a"
    with pytest.raises(C.ConfigError, match=r"agent\.slots"):
        C.from_tree({"agent": {"slots": "many"}})


def test_a_password_file_must_be_private_and_the_users_own(tmp_path) -> None:
    read_password_file = C.read_password_file
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    assert read_password_file(str(pw)) == "s3cret"
    pw.chmod(0o640)
    with pytest.raises(C.ConfigError, match=r"has mode 0640; others may read it: chmod 600"):
        read_password_file(str(pw))
    pw.chmod(0o400)
    assert read_password_file(str(pw)) == "s3cret"
    link = tmp_path / "link"
    link.symlink_to(pw)
    with pytest.raises(C.ConfigError, match=r"password_file .*link: Too many levels of symbolic links"):
        read_password_file(str(link))
    with pytest.raises(C.ConfigError, match="No such file"):
        read_password_file(str(tmp_path / "missing"))


def test_agent_output_sizes_that_would_not_fit_an_event_are_refused_naming_the_setting():
    from common.limits import MAX_CAPTURE_BYTES, MAX_CHUNK_BYTES

    assert C.load(None, {"agent": {"chunk_bytes": MAX_CHUNK_BYTES}}, environ={}).agent.chunk_bytes == MAX_CHUNK_BYTES
    for setting, value in (("chunk_bytes", MAX_CHUNK_BYTES + 1), ("capture_bytes", MAX_CAPTURE_BYTES + 1)):
        with pytest.raises(C.ConfigError, match=rf"\$\.agent\.{setting}"):
            C.load(None, {"agent": {setting: value}}, environ={})


def test_beacon_interval_per_service_defaults_on_and_refuses_a_negative_one():
    cfg = C.load(None, {"orchestrator": {"beacon_s": 0}}, environ={"P4BUS_MASTER_BEACON_S": "0.5"})
    assert (cfg.agent.beacon_s, cfg.master.beacon_s, cfg.orchestrator.beacon_s) == (C.DEFAULT_BEACON_S, 0.5, 0.0)
    for section in ("agent", "master", "orchestrator"):
        with pytest.raises(C.ConfigError, match=rf"\$\.{section}\.beacon_s"):
            C.load(None, {section: {"beacon_s": -1}}, environ={})


def test_one_broker_by_default_or_the_brokers_named_and_the_agent_may_name_its_own():
    cfg = C.load(environ={})
    [only] = cfg.bus_brokers()
    assert (only.xsub, only.xpub, only.replay) == tuple(
        cfg.endpoint(n) for n in ("broker_xsub", "broker_xpub", "broker_replay")
    )
    assert cfg.agent_brokers() == [cfg.endpoint("broker_xsub")]
    two = [{"xsub": f"tcp://h{i}:1", "xpub": f"tcp://h{i}:2", "replay": f"tcp://h{i}:3"} for i in (1, 2)]
    cfg = C.load(environ={"P4BUS_BROKERS": json.dumps(two)})
    assert cfg.broker_xsubs() == ["tcp://h1:1", "tcp://h2:1"]
    assert cfg.broker_xpubs() == ["tcp://h1:2", "tcp://h2:2"]
    assert cfg.broker_replays() == ["tcp://h1:3", "tcp://h2:3"]
    assert cfg.agent_brokers() == ["tcp://h1:1", "tcp://h2:1"]
    assert C.load(environ={"P4BUS_BROKERS": json.dumps(two), "P4BUS_AGENT_BROKER": "tcp://x:1"}).agent_brokers() == [
        "tcp://x:1"
    ]
    with pytest.raises(C.ConfigError, match="replay"):
        C.load(environ={"P4BUS_BROKERS": json.dumps([{"xsub": "tcp://h:1", "xpub": "tcp://h:2"}])})
