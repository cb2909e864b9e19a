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


ALLOW_A = '{"source_pod":["bookinfo/"]}'
ALLOW_B = '{"destination_pod":["bookinfo/"]}'
DENY = '{"verdict":["DROPPED"]}'


def _request(cfg: config.CollectConfig) -> bytes:
    from flowpipe.ingest.stream import FlowStream

    fs = FlowStream(cfg.relays[0], cfg, resume_since=lambda last: None, on_messages=print)
    return fs.request().SerializeToString(deterministic=True)


def test_repeated_allow_flags_list_and_file_are_one_request(tmp_path):
    """Two --allow flags used to keep only the last one: Hubble's allowlist is all of them."""
    repeated = config.load(relays=("c1=127.0.0.1:4245",), allow=(ALLOW_A, ALLOW_B), deny=(DENY,))
    assert len(repeated.relays[0].allow) == 2 and len(repeated.relays[0].deny) == 1
    one_list = config.load(
        relays=("c1=127.0.0.1:4245",), allow=(f"[{ALLOW_A}, {ALLOW_B}]",), deny=(f"[{DENY}]",)
    )
    path = tmp_path / "allow.yaml"  # as `hubble observe --pod bookinfo/ --print-raw-filters` prints
    path.write_text(f"allowlist:\n    - '{ALLOW_A}'\n    - '{ALLOW_B}'\n")
    from_file = config.load(relays=("c1=127.0.0.1:4245",), allow=(str(path),), deny=(DENY,))
    mixed = config.load(
        relays=("c1=127.0.0.1:4245",), allow=(ALLOW_A, f"[{ALLOW_B}]"), deny=(DENY,)
    )
    want = _request(repeated)
    assert _request(one_list) == _request(from_file) == _request(mixed) == want
    from flowpipe.api.observer import observer_pb2

    req = observer_pb2.GetFlowsRequest.FromString(want)
    assert [list(f.source_pod) for f in req.whitelist] == [["bookinfo/"], []]
    assert [list(f.destination_pod) for f in req.whitelist] == [[], ["bookinfo/"]]
    assert [list(f.verdict) for f in req.blacklist] == [[2]]


def test_print_raw_filters_reads_back():
    cfg = config.load(relays=("c1=127.0.0.1:4245",), allow=(ALLOW_A, ALLOW_B), deny=(DENY,))
    text = config.raw_filters_yaml(cfg.relays)
    assert text == (
        "# relay c1 (127.0.0.1:4245)\n"
        "allowlist:\n"
        f"    - '{ALLOW_A}'\n"
        f"    - '{ALLOW_B}'\n"
        "denylist:\n"
        "    - '{\"verdict\":[2]}'\n"
    )
    from flowpipe.serve import filters

    allow, deny = filters.parse_raw_filters(text)
    assert allow == cfg.relays[0].allow and deny == cfg.relays[0].deny


def test_flags_over_the_file(tmp_path):
    path = tmp_path / "collect.yaml"
    path.write_text(
        "store: /from/file\nkeep: 7d\nflush_interval: 1s\n"
        "relays:\n  - {cluster: c1, address: 'a:1', plaintext: true}\n"
    )
    cfg = config.load(
        str(path), relays=("c2=b:2",), plaintext=True, keep="2w", store="/from/flag", quiet=True
    )
    assert [r.cluster for r in cfg.relays] == ["c1", "c2"]
    assert cfg.keep == 2 * 604800 and cfg.flush_interval == 1 and cfg.store == "/from/flag"
    assert cfg.quiet
    assert config.load(str(path)).store == "/from/file"


@pytest.mark.parametrize(
    "flags, msg",
    [
        ({"allow": (ALLOW_A,)}, "--allow: these describe --relay relays"),
        ({"plaintext": True, "server_name": "x"}, "--plaintext, --tls-server-name: these"),
        ({"relays": ("c1=a:1",), "since": "yesterday"}, "invalid since 'yesterday'"),
        ({"relays": ("c1=a:1",), "allow": ("{nope",)}, "--allow: invalid FlowFilter list"),
        ({"relays": ("c1=a:1",), "flush_rows": 0}, "--flush-rows must be a positive integer"),
        ({"relays": ("c1=a:1",), "keepalive": "soon"}, "invalid --keepalive 'soon'"),
    ],
)
def test_flag_errors(tmp_path, flags, msg):
    """Flags that would be ignored (no --relay for them to describe) are refused, not dropped."""
    path = tmp_path / "collect.yaml"
    path.write_text("relays:\n  - {cluster: c0, address: 'a:1', plaintext: true}\n")
    with pytest.raises(ConfigError, match=msg):
        config.load(str(path), **flags)
