"""The device's identity, obtained at enrollment and kept in the state dir (mode 0600): its id,
its client certificate and key, the fleet CA, and the key list it pins."""

from __future__ import annotations

import base64
import datetime
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent._fs import atomic_write
from agent.errors import AgentError, ManifestError
from agent.updates.trust import TrustedKeys, pin_keylist

__all__ = ["Identity", "new_key_and_csr"]

_FORMAT = 3


def new_key_and_csr(common_name: str) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key and a CSR for it (both PEM). The key never leaves the device."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Identity:
    """Who this device is for the fleet server, and which keys it trusts."""

    device_id: str
    fleet_id: str
    trust: TrustedKeys
    mqtt_url: str
    device_address: str  # host:port of the server's mTLS device port
    certificate_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    @staticmethod
    def path(state_dir: Path) -> Path:
        """Where the identity is stored."""
        return state_dir / "identity.json"

    @staticmethod
    def key_path(state_dir: Path) -> Path:
        """Where the device's private key is stored (0600)."""
        return state_dir / "device.key"

    @staticmethod
    def cert_path(state_dir: Path) -> Path:
        """The device certificate as a PEM file (for TLS clients that want files: MQTT)."""
        return state_dir / "device.crt"

    @staticmethod
    def ca_path(state_dir: Path) -> Path:
        """The fleet CA as a PEM file."""
        return state_dir / "fleet-ca.crt"

    def with_trust(self, trust: TrustedKeys) -> Identity:
        """The same identity trusting ``trust`` (after a key rotation)."""
        return replace(self, trust=trust)

    def with_certificate(self, certificate_pem: bytes, key_pem: bytes) -> Identity:
        """The same identity with a renewed certificate and its key."""
        return replace(self, certificate_pem=certificate_pem, key_pem=key_pem)

    @property
    def certificate_expires(self) -> float:
        """When the client certificate expires (unix seconds)."""
        cert = x509.load_pem_x509_certificate(self.certificate_pem)
        return cert.not_valid_after_utc.replace(tzinfo=datetime.UTC).timestamp()

    def save(self, state_dir: Path) -> None:
        """Persist atomically, readable by the agent's user only; the key first, so an identity
        never names a certificate whose key is missing."""
        atomic_write(self.key_path(state_dir), self.key_pem, mode=0o600)
        atomic_write(self.cert_path(state_dir), self.certificate_pem, mode=0o644)
        atomic_write(self.ca_path(state_dir), self.ca_pem, mode=0o644)
        payload = {
            "format": _FORMAT,
            "device_id": self.device_id,
            "fleet_id": self.fleet_id,
            "keylist": base64.b64encode(self.trust.envelope).decode(),
            "mqtt_url": self.mqtt_url,
            "device_address": self.device_address,
            "certificate": self.certificate_pem.decode(),
            "ca": self.ca_pem.decode(),
        }
        atomic_write(self.path(state_dir), json.dumps(payload, indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, state_dir: Path) -> Identity | None:
        """The stored identity, or None before enrollment.

        Raises:
            AgentError: the file exists but is unreadable, of another format, or its pinned key
                list no longer verifies (disk damage or tampering).
        """
        path = cls.path(state_dir)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            key_pem = cls.key_path(state_dir).read_bytes() if raw.get("format") == _FORMAT else b""
        except FileNotFoundError as exc:
            if exc.filename == os.fspath(path):
                return None
            raise AgentError(f"{path} names a certificate but its key is missing") from exc
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read identity {path}: {exc}") from exc
        if raw.get("format") != _FORMAT:
            raise AgentError(
                f"{path} has format {raw.get('format')!r}; this agent reads {_FORMAT} (devices "
                "now authenticate with certificates). Move it away and enroll the device again"
            )
        try:
            # Expiry is judged per manifest; here only the signatures of the pinned list count.
            trust = pin_keylist(base64.b64decode(raw["keylist"]), fleet_id=raw["fleet_id"], now=0)
        except (ManifestError, ValueError, KeyError) as exc:
            raise AgentError(f"the key list pinned in {path} does not verify: {exc}") from exc
        identity = cls(
            device_id=raw["device_id"],
            fleet_id=raw["fleet_id"],
            trust=trust,
            mqtt_url=raw.get("mqtt_url", ""),
            device_address=raw["device_address"],
            certificate_pem=raw["certificate"].encode(),
            key_pem=key_pem,
            ca_pem=raw["ca"].encode(),
        )
        if not cls.cert_path(state_dir).exists():  # an identity saved before the PEM files
            identity.save(state_dir)
        return identity
