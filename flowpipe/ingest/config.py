"""Collector configuration: relays bound to cluster names, TLS files, filters, timings."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowpipe.common import times
from flowpipe.common.text import first_line
from flowpipe.common.units import parse_duration, parse_size
from flowpipe.errors import ConfigError
from flowpipe.store.layout import check_cluster


@dataclass
class TLSConfig:
    """TLS settings of one relay, named like the hubble CLI's flags."""

    enabled: bool = True
    ca_files: list[str] = field(default_factory=list)  # --tls-ca-cert-files (system roots if empty)
    cert_file: str | None = None  # --tls-client-cert-file (mTLS)
    key_file: str | None = None  # --tls-client-key-file
    server_name: str | None = None  # --tls-server-name


@dataclass
class RelayConfig:
    cluster: str
    address: str
    tls: TLSConfig = field(default_factory=TLSConfig)
    allow: list = field(default_factory=list)  # flow.FlowFilter messages (server-side whitelist)
    deny: list = field(default_factory=list)  # flow.FlowFilter messages (server-side blacklist)

    @property
    def name(self) -> str:
        return f"{self.cluster} ({self.address})"


@dataclass
class CollectConfig:
    relays: list[RelayConfig] = field(default_factory=list)
    store: str | None = None
    flush_interval: float = 2.0  # seconds between commits of buffered flows
    flush_rows: int = 30_000  # commit earlier when this many flows are buffered
    max_buffer_bytes: int = 32 * 1024 * 1024  # per cluster: stop reading its relay beyond this
    keepalive: float = (
        30.0  # HTTP/2 ping interval; a dead peer is noticed after keepalive + timeout
    )
    keepalive_timeout: float = 10.0
    idle_timeout: float = 0.0  # re-dial when a stream delivers nothing for this long (0 = off)
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    resume_overlap: float = 10.0  # ask Relay for this much before the last stored flow
    since: str | None = None  # first start only: how far back to ask (None = all Relay holds)
    metrics_listen: str | None = None
    compact_every: float = 60.0  # run compaction (closed hours, open hours' small files) this often
    compact_settle: float = 30.0  # open hours: committed files wait this long before a merge
    keep: float | None = None  # retention in seconds (None = keep everything)
    progress_every: float = 5.0
    log_every: float = 30.0  # repeated warnings (lost events, retries): one line per this
    quiet: bool = False


def parse_relay(text: str) -> tuple[str, str]:
    """'cluster1=127.0.0.1:4245' -> ('cluster1', '127.0.0.1:4245')."""
    if "=" not in text:
        raise ConfigError(
            f"invalid --relay {text!r}: expected CLUSTER=HOST:PORT, e.g. cluster1=localhost:4245"
        )
    cluster, address = text.split("=", 1)
    cluster, address = cluster.strip(), address.strip()
    try:
        check_cluster(cluster)
    except ValueError as exc:
        raise ConfigError(f"--relay {text!r}: {exc}") from exc
    _check_address(address, f"--relay {text!r}")
    return cluster, address


def _check_address(address: str, where: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: address {address!r} must be HOST:PORT")


def parse_filters(values: Any, where: str) -> list:
    """FlowFilters from one value or several (JSON object or list, YAML, hubble --print-raw-filters
    output, or a file holding any of them), in order: several values make one longer list."""
    from flowpipe.serve import filters

    if isinstance(values, (tuple, list)) and all(isinstance(v, str) for v in values):
        items = list(values)  # repeated flags: each is parsed alone, then the lists are joined
    else:
        items = [values]
    out = []
    for item in items:
        try:
            out += filters.parse_filter_list(item)
        except Exception as exc:  # filters raises its own error types; keep one line here
            raise ConfigError(f"{where}: invalid FlowFilter list: {exc}") from exc
    return out


def load_file(path: str) -> dict[str, Any]:
    """A YAML or TOML config file as a dict."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config {path}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return data


_DURATIONS = {
    "flush_interval",
    "keepalive",
    "keepalive_timeout",
    "idle_timeout",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
    "resume_overlap",
    "compact_every",
    "compact_settle",
    "keep",
    "progress_every",
    "log_every",
}
_INTS = {"flush_rows"}
_STRS = {"store", "since", "metrics_listen"}


def from_dict(data: dict[str, Any], source: str = "config") -> CollectConfig:
    """Build a CollectConfig from a parsed config file, with errors naming the key."""
    cfg = CollectConfig()
    for key, value in data.items():
        if key == "relays":
            continue
        if key in _DURATIONS:
            setattr(cfg, key, parse_duration(value, f"{source}: {key}"))
        elif key == "max_buffer":
            cfg.max_buffer_bytes = parse_size(value, f"{source}: max_buffer")
        elif key in _INTS:
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{source}: {key} must be a positive integer")
            setattr(cfg, key, value)
        elif key in _STRS:
            setattr(cfg, key, str(value))
        elif key == "quiet":
            cfg.quiet = bool(value)
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}")
    relays = data.get("relays") or []
    if not isinstance(relays, list):
        raise ConfigError(f"{source}: relays must be a list")
    for i, item in enumerate(relays):
        where = f"{source}: relays[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with cluster and address")
        cfg.relays.append(_relay_from_dict(item, where))
    return cfg


def _relay_from_dict(item: dict[str, Any], where: str) -> RelayConfig:
    unknown = set(item) - {"cluster", "address", "tls", "plaintext", "allow", "deny"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        cluster = check_cluster(str(item.get("cluster", "")))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    address = str(item.get("address", ""))
    _check_address(address, where)
    tls_in = item.get("tls") or {}
    if not isinstance(tls_in, dict):
        raise ConfigError(f"{where}: tls must be a mapping")
    unknown = set(tls_in) - {"ca", "ca_files", "cert", "key", "server_name"}
    if unknown:
        raise ConfigError(f"{where}.tls: unknown key(s) {', '.join(sorted(unknown))}")
    ca = tls_in.get("ca_files", tls_in.get("ca", []))
    tls = TLSConfig(
        enabled=not bool(item.get("plaintext", False)),
        ca_files=[ca] if isinstance(ca, str) else list(ca),
        cert_file=tls_in.get("cert"),
        key_file=tls_in.get("key"),
        server_name=tls_in.get("server_name"),
    )
    return RelayConfig(
        cluster=cluster,
        address=address,
        tls=tls,
        allow=parse_filters(item["allow"], f"{where}.allow") if item.get("allow") else [],
        deny=parse_filters(item["deny"], f"{where}.deny") if item.get("deny") else [],
    )


def validate(cfg: CollectConfig) -> CollectConfig:
    """Check the whole configuration; raise ConfigError naming what is wrong."""
    if not cfg.relays:
        raise ConfigError("no relays: pass --relay CLUSTER=HOST:PORT or a config file with relays")
    seen: dict[str, str] = {}
    for r in cfg.relays:
        if r.cluster in seen:
            raise ConfigError(
                f"cluster {r.cluster} is bound to two relays ({seen[r.cluster]}, {r.address})"
            )
        seen[r.cluster] = r.address
        if bool(r.tls.cert_file) != bool(r.tls.key_file):
            raise ConfigError(
                f"relay {r.name}: mTLS needs both a client certificate and a key file"
            )
    if cfg.flush_interval <= 0 or cfg.flush_interval > 5:
        raise ConfigError("flush interval must be greater than 0 and at most 5s")
    if cfg.backoff_initial <= 0 or cfg.backoff_max < cfg.backoff_initial:
        raise ConfigError("backoff: initial must be > 0 and max >= initial")
    if cfg.since is not None:
        times.parse_time_ns(cfg.since, "since")  # refused now, not at the first dial
    return cfg


# flags of `flowpipe collect` that set a duration or a size of CollectConfig
_FLAG_DURATIONS = (
    "flush_interval",
    "keepalive",
    "idle_timeout",
    "backoff_max",
    "resume_overlap",
    "keep",
)


def load(
    config_file: str | None = None,
    *,
    relays: tuple[str, ...] = (),
    plaintext: bool = False,
    ca_files: tuple[str, ...] = (),
    cert_file: str | None = None,
    key_file: str | None = None,
    server_name: str | None = None,
    allow: tuple[str, ...] = (),
    deny: tuple[str, ...] = (),
    store: str | None = None,
    since: str | None = None,
    flush_rows: int | None = None,
    max_buffer: str | None = None,
    metrics_listen: str | None = None,
    quiet: bool = False,
    **durations: str | None,
) -> CollectConfig:
    """The collector's configuration: the file (if any), command-line flags over it, validated."""
    unknown = set(durations) - set(_FLAG_DURATIONS)
    if unknown:
        raise TypeError(f"unknown collect option(s): {', '.join(sorted(unknown))}")
    cfg = from_dict(load_file(config_file), config_file) if config_file else CollectConfig()
    # flags that describe the --relay relays; a config file sets them per relay instead
    relay_flags = {
        "--plaintext": plaintext,
        "--tls-ca-cert-files": ca_files,
        "--tls-client-cert-file": cert_file,
        "--tls-client-key-file": key_file,
        "--tls-server-name": server_name,
        "--allow": allow,
        "--deny": deny,
    }
    if not relays and any(relay_flags.values()):
        flags = ", ".join(name for name, value in relay_flags.items() if value)
        raise ConfigError(
            f"{flags}: these describe --relay relays; give --relay, or set them per relay in the config file"
        )
    tls = TLSConfig(
        enabled=not plaintext,
        ca_files=list(ca_files),
        cert_file=cert_file,
        key_file=key_file,
        server_name=server_name,
    )
    allow_f = parse_filters(allow, "--allow") if allow else []
    deny_f = parse_filters(deny, "--deny") if deny else []
    for text in relays:
        cluster, address = parse_relay(text)
        cfg.relays.append(RelayConfig(cluster, address, tls=tls, allow=allow_f, deny=deny_f))
    for name, value in durations.items():
        if value is not None:
            setattr(cfg, name, parse_duration(value, "--" + name.replace("_", "-")))
    if flush_rows is not None:
        if flush_rows <= 0:
            raise ConfigError(f"--flush-rows must be a positive integer, not {flush_rows}")
        cfg.flush_rows = flush_rows
    if max_buffer is not None:
        cfg.max_buffer_bytes = parse_size(max_buffer, "--max-buffer")
    cfg.since = since if since is not None else cfg.since
    cfg.metrics_listen = metrics_listen or cfg.metrics_listen
    cfg.quiet = quiet or cfg.quiet
    cfg.store = store or cfg.store
    return validate(cfg)


def raw_filters_yaml(relays: list[RelayConfig]) -> str:
    """The allowlist and denylist of each relay as `hubble observe --print-raw-filters` prints
    them (one YAML document per relay, named in a comment)."""
    docs = []
    for r in relays:
        lines = [f"# relay {r.name}"]
        for key, filters in (("allowlist", r.allow), ("denylist", r.deny)):
            if filters:
                lines.append(f"{key}:")
                lines += [f"    - '{_filter_json(f)}'" for f in filters]
        if len(lines) == 1:
            lines.append("{}")  # what hubble prints for a request without filters
        docs.append("\n".join(lines) + "\n")
    return "---\n".join(docs)


def _filter_json(f) -> str:
    """One FlowFilter as hubble's Go json.Marshal writes it: proto field names, enums as numbers;
    quoted for a single-quoted YAML scalar."""
    import json

    from google.protobuf import json_format

    d = json_format.MessageToDict(f, preserving_proto_field_name=True, use_integers_for_enums=True)
    return json.dumps(d, separators=(",", ":")).replace("'", "''")
