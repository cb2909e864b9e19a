"""Collector configuration: relay specs, files, durations, and one-line errors."""

from __future__ import annotations

import pytest

from flowpipe.errors import ConfigError
from flowpipe.ingest import config


def test_parse_relay():
    assert config.parse_relay("cluster1=127.0.0.1:4245") == ("cluster1", "127.0.0.1:4245")
    assert config.parse_relay(" c2 = hubble-relay.kube-system:443 ") == (
        "c2",
        "hubble-relay.kube-system:443",
    )


@pytest.mark.parametrize(
    "text, msg",
    [
        ("127.0.0.1:4245", "expected CLUSTER=HOST:PORT"),
        ("c1=localhost", "must be HOST:PORT"),
        ("c1=localhost:99999", "must be HOST:PORT"),
        ("bad name=localhost:1", "invalid cluster name"),
    ],
)
def test_parse_relay_errors(text, msg):
    with pytest.raises(ConfigError, match=msg):
        config.parse_relay(text)


@pytest.mark.parametrize(
    "text, seconds",
    [("5s", 5), ("250ms", 0.25), ("2m", 120), ("1.5h", 5400), ("7d", 604800), (3, 3)],
)
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


def test_duration_error_names_what():
    with pytest.raises(ConfigError, match="invalid --keep 'soon'"):
        config.parse_duration("soon", "--keep")


def test_yaml_file(tmp_path):
    path = tmp_path / "flowpipe.yaml"
    path.write_text(
        """
store: /var/lib/flowpipe
flush_interval: 1s
keep: 7d
relays:
  - cluster: cluster1
    address: hubble-relay.kube-system.svc:443
    tls:
      ca: /etc/hubble/ca.crt
      cert: /etc/hubble/tls.crt
      key: /etc/hubble/tls.key
      server_name: ui.hubble-relay.cilium.io
  - cluster: cluster2
    address: 127.0.0.1:4246
    plaintext: true
"""
    )
    cfg = config.validate(config.from_dict(config.load_file(str(path)), str(path)))
    assert cfg.store == "/var/lib/flowpipe" and cfg.flush_interval == 1 and cfg.keep == 604800
    r1, r2 = cfg.relays
    assert (
        r1.tls.enabled
        and r1.tls.ca_files == ["/etc/hubble/ca.crt"]
        and r1.tls.server_name.startswith("ui.")
    )
    assert not r2.tls.enabled


def test_toml_file(tmp_path):
    path = tmp_path / "flowpipe.toml"
    path.write_text(
        'flush_interval = "2s"\n[[relays]]\ncluster = "c1"\naddress = "localhost:4245"\nplaintext = true\n'
    )
    cfg = config.validate(config.from_dict(config.load_file(str(path)), str(path)))
    assert cfg.relays[0].address == "localhost:4245"


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"flush_intervall": "1s"}, "unknown setting 'flush_intervall'"),
        (
            {"relays": [{"cluster": "c1", "address": "x:1", "tls": {"cafile": "x"}}]},
            r"relays\[0\].tls: unknown key",
        ),
        ({"relays": [{"cluster": "c1"}]}, r"relays\[0\]: address '' must be HOST:PORT"),
        ({"relays": "c1"}, "relays must be a list"),
        ({"flush_rows": -1}, "flush_rows must be a positive integer"),
    ],
)
def test_file_errors_name_the_key(data, msg):
    with pytest.raises(ConfigError, match=msg):
        config.from_dict(data, "cfg.yaml")


def test_unparseable_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("relays: [\n")
    with pytest.raises(ConfigError, match=f"config {path}:"):
        config.load_file(str(path))


def test_validate():
    cfg = config.CollectConfig()
    with pytest.raises(ConfigError, match="no relays"):
        config.validate(cfg)
    cfg.relays = [config.RelayConfig("c1", "a:1"), config.RelayConfig("c1", "b:2")]
    with pytest.raises(ConfigError, match="cluster c1 is bound to two relays"):
        config.validate(cfg)
    cfg.relays = [config.RelayConfig("c1", "a:1", tls=config.TLSConfig(cert_file="x"))]
    with pytest.raises(ConfigError, match="needs both a client certificate and a key"):
        config.validate(cfg)
    cfg.relays = [config.RelayConfig("c1", "a:1")]
    cfg.flush_interval = 10
    with pytest.raises(ConfigError, match="at most 5s"):
        config.validate(cfg)
