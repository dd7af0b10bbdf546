"""The fleet CA: issues the server's TLS certificate and one client certificate per device.

ECDSA P-256 throughout (every TLS stack takes it). The CA key stays in the data dir (0600);
device keys never leave their devices: a device sends a CSR and gets a certificate whose
common name is the device id the server chose. Revocation is by serial: the server keeps each
device's current certificate serial and refuses any other (a revoked device has none).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.errors import BadRequestError, DataDirError

__all__ = [
    "DEVICE_CERT_DAYS",
    "FleetCA",
    "IssuedCert",
    "default_sans",
    "peer_certificate",
    "public_key_sha256",
]

DEVICE_CERT_DAYS = 365
_CA_DAYS = 20 * 365
_SERVER_DAYS = 365
_MAX_CSR = 16 * 1024


@dataclass(frozen=True)
class IssuedCert:
    pem: bytes
    serial: str  # lowercase hex
    not_after: int  # unix seconds


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def default_sans() -> list[str]:
    """Names the server certificate covers unless told otherwise: this host and loopback."""
    return sorted({"localhost", "127.0.0.1", "::1", socket.gethostname()})


class FleetCA:
    """The CA of one fleet, loaded from (or created in) a data dir folder."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, folder: Path, fleet_id: str) -> FleetCA:
        """Create the CA key (0600) and self-signed certificate in ``folder``.

        Raises:
            DataDirError: a CA exists there already.
        """
        if (folder / "ca.key").exists():
            raise DataDirError(f"{folder} holds a CA already; refusing to overwrite it")
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"EdgeFleet {fleet_id} CA"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(
            folder / "ca.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        (folder / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    @classmethod
    def load(cls, folder: Path) -> FleetCA:
        """Load the CA of a data dir.

        Raises:
            DataDirError: missing or unreadable.
        """
        try:
            key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        except FileNotFoundError as exc:
            raise DataDirError(f"{folder} has no fleet CA (ca.key and ca.crt)") from exc
        except (OSError, ValueError) as exc:
            raise DataDirError(f"cannot read the fleet CA in {folder}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DataDirError(f"{folder / 'ca.key'} is not an ECDSA key")
        return cls(key, cert)

    def _issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        days: int,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> IssuedCert:
        now = _now()
        not_after = now + datetime.timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCert(
            cert.public_bytes(serialization.Encoding.PEM),
            f"{cert.serial_number:x}",
            int(not_after.timestamp()),
        )

    def server_credentials(self, names: list[str]) -> tuple[bytes, bytes]:
        """A fresh key and certificate (PEM) for the server, valid for ``names`` (DNS names or
        IP addresses)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet-server")])
        issued = self._issue(
            subject, key.public_key(), _SERVER_DAYS, ExtendedKeyUsageOID.SERVER_AUTH, sans
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, issued.pem

    def client_credentials(self, common_name: str, days: int = 365) -> tuple[bytes, bytes]:
        """A fresh key and client certificate (PEM) for a service of the fleet itself, e.g.
        the server's MQTT connection ("edgefleet:server": the colon keeps it apart from every
        possible device id)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet service"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        issued = self._issue(subject, key.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, issued.pem

    def crl(self, revoked: Sequence[tuple[str, int]]) -> bytes:
        """A certificate revocation list (PEM) of these (serial in hex, revoked at) for brokers
        that check client certificates themselves (mosquitto's ``crlfile``). It is valid as
        long as the CA: mosquitto reads it only at its start, and an expired list would make it
        refuse every client."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(self.cert.not_valid_after_utc)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(datetime.datetime.fromtimestamp(when, datetime.UTC))
                .build()
            )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def check_csr(csr_pem: bytes, *, expected_cn: str) -> x509.CertificateSigningRequest:
        """A device's CSR, once it is well formed, self-signed by an ECDSA P-256 key, and
        names ``expected_cn`` (or nothing) as its common name.

        Raises:
            BadRequestError: the CSR is malformed, badly signed, of another key type, or for
                another device.
        """
        if len(csr_pem) > _MAX_CSR:
            raise BadRequestError(f"CSR of {len(csr_pem)} bytes; at most {_MAX_CSR}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise BadRequestError("the certificate signing request is not a PEM CSR") from exc
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError):
            valid = False
        if not valid:
            raise BadRequestError("the CSR's signature does not verify")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise BadRequestError("device keys must be ECDSA P-256")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names and names[0].value != expected_cn:
            raise BadRequestError(
                f"the CSR is for {names[0].value!r}, not {expected_cn!r}; a device asks "
                "certificates for itself only"
            )
        return csr

    def sign_device_csr(
        self, csr_pem: bytes, device_id: str, *, expected_cn: str, days: int = DEVICE_CERT_DAYS
    ) -> IssuedCert:
        """A client certificate for ``device_id`` from the device's CSR (see :meth:`check_csr`).

        Raises:
            BadRequestError: the CSR does not pass :meth:`check_csr`.
        """
        csr = self.check_csr(csr_pem, expected_cn=expected_cn)
        return self._issue_client(csr, "EdgeFleet device", device_id, days)

    def sign_admin_csr(self, csr_pem: bytes, common_name: str, days: int) -> IssuedCert:
        """A client certificate for a named admin (``edgefleet-admin:NAME``, from
        :mod:`fleet_server.admins.store`) from a CSR made where the admin keeps the key.

        Raises:
            BadRequestError: the CSR does not pass :meth:`check_csr`.
        """
        csr = self.check_csr(csr_pem, expected_cn=common_name)
        return self._issue_client(csr, "EdgeFleet admin", common_name, days)

    def _issue_client(
        self, csr: x509.CertificateSigningRequest, organization: str, common_name: str, days: int
    ) -> IssuedCert:
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):  # pragma: no cover - check_csr did
            raise BadRequestError("client keys must be ECDSA P-256")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        return self._issue(subject, key, days, ExtendedKeyUsageOID.CLIENT_AUTH)


def public_key_sha256(csr: x509.CertificateSigningRequest) -> str:
    """The sha256 (hex) of a CSR's public key (DER SubjectPublicKeyInfo): which key asks. Only
    the key's holder can make a CSR for it whose signature verifies (:meth:`FleetCA.check_csr`)."""
    der = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def peer_certificate(pem: bytes) -> tuple[str, str]:
    """(common name, serial hex) of a verified peer certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (str(names[0].value) if names else ""), f"{cert.serial_number:x}"
