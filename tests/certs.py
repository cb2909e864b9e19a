"""Test PKI generated on the fly: a CA, relay server certs (good, expired, wrong name), client certs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RELAY_NAME = "ui.hubble-relay.cilium.io"


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pair:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


class CA:
    """A throwaway certificate authority writing PEM files under a directory."""

    def __init__(self, directory: Path, name: str = "flowpipe test CA"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = _key()
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = self.dir / f"{name.replace(' ', '-')}.crt"
        self.path.write_bytes(_pem_cert(self.cert))

    def issue(
        self,
        name: str,
        *,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
        client: bool = False,
        expired: bool = False,
    ) -> Pair:
        """A certificate for name, signed by this CA, written as name.crt / name.key."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
            if expired
            else (
                now - dt.timedelta(hours=1),
                now + dt.timedelta(days=10),
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in (dns or [])]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in (ips or [])]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        pair.cert.write_bytes(_pem_cert(cert))
        pair.key.write_bytes(_pem_key(key))
        return pair


def relay_pki(directory: Path) -> dict[str, object]:
    """CA, a Relay server cert for *.hubble-relay.cilium.io, an expired one, a client cert, a foreign CA."""
    ca = CA(directory / "ca")
    other = CA(directory / "other", name="someone else CA")
    return {
        "ca": ca,
        "other_ca": other,
        "server": ca.issue("relay", dns=["*.hubble-relay.cilium.io"]),
        "server_localhost": ca.issue("relay-local", dns=["localhost"], ips=["127.0.0.1"]),
        "expired": ca.issue("relay-expired", dns=["*.hubble-relay.cilium.io"], expired=True),
        "client": ca.issue("flowpipe-client", client=True),
        "foreign_client": other.issue("intruder", client=True),
    }
