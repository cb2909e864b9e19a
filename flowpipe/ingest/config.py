"""Collector configuration: relays bound to cluster names, TLS files, filters, timings."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowpipe.errors import ConfigError
from flowpipe.store.layout import check_cluster

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|k|m|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
}


def parse_size(text: str | int, what: str = "size") -> int:
    """'64MB', '512k', '1G' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"invalid {what} {text!r}: use e.g. 64MB, 512KB, 1GB")
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """'5s', '2m', '1.5h', '7d', '250ms' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ConfigError(f"invalid {what} {text!r}: use e.g. 500ms, 5s, 2m, 1h, 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


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
    since: str | None = (
        None  # first start, no stored flows: how far back to ask (None = all Relay holds)
    )
    metrics_listen: str | None = None
    compact_every: float = (
        60.0  # run compaction (closed hours, open hours' small files) this often (0 = never)
    )
    compact_settle: float = (
        30.0  # open hours: committed files wait this long before a merge takes them
    )
    keep: float | None = None  # retention in seconds (None = keep everything)
    progress_every: float = 5.0
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


def parse_filters(value: Any, where: str) -> list:
    """FlowFilters from JSON text, a YAML/JSON structure or a file path (hubble --print-raw-filters shape)."""
    from flowpipe.serve import filters

    try:
        return filters.parse_filter_list(value)
    except Exception as exc:  # filters raises its own error types; keep one line here
        raise ConfigError(f"{where}: invalid FlowFilter list: {exc}") from exc


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
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config {path}: {first}") from exc
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
    return cfg
