"""A relay's TLS files, read from disk at every dial so rotated files apply."""

from __future__ import annotations

from flowpipe.errors import ConfigError
from flowpipe.ingest.config import RelayConfig


def _read(path: str, relay: RelayConfig, what: str, marker: bytes) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"relay {relay.name}: cannot read {what} {path}: {exc.strerror or exc}"
        ) from exc
    if marker not in data:
        raise ConfigError(
            f"relay {relay.name}: {what} {path} is not a PEM file (no {marker.decode()!r})"
        )
    return data


def credential_pems(relay: RelayConfig) -> tuple[bytes | None, bytes | None, bytes | None] | None:
    """(CA certificates, client key, client certificate) PEMs for relay's TLS channel (None for
    what is not configured), or None for plaintext (only when the relay asks for it)."""
    tls = relay.tls
    if not tls.enabled:
        return None
    roots = None
    if tls.ca_files:
        roots = b"".join(
            _read(p, relay, "CA file", b"-----BEGIN CERTIFICATE-----") for p in tls.ca_files
        )
    cert = key = None
    if tls.cert_file or tls.key_file:
        if not (tls.cert_file and tls.key_file):
            raise ConfigError(
                f"relay {relay.name}: mTLS needs both --tls-client-cert-file and --tls-client-key-file"
            )
        cert = _read(tls.cert_file, relay, "client certificate", b"-----BEGIN CERTIFICATE-----")
        key = _read(tls.key_file, relay, "client key", b"PRIVATE KEY-----")
    return roots, key, cert


def channel_options(relay: RelayConfig) -> list[tuple[str, object]]:
    """Options that belong to TLS (server name override for certificates like *.hubble-relay.cilium.io)."""
    if relay.tls.enabled and relay.tls.server_name:
        return [("grpc.ssl_target_name_override", relay.tls.server_name)]
    return []
