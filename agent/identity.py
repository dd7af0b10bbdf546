"""The device's identity, obtained at enrollment and kept in the state dir (mode 0600): its id,
its client certificate and key, the fleet CA, and the key list it pins; and, until it has one,
the key and CSR of the enrollment in progress (``enrollment/``): a kill after the server
answered but before the identity was saved must not cost the device its token, so a retry
asks with the same key, and the server answers a repeat with the same identity."""

from __future__ import annotations

import base64
import datetime
import json
import logging
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

__all__ = ["Identity", "clear_pending_enrollment", "new_key_and_csr", "pending_enrollment"]

log = logging.getLogger(__name__)
_FORMAT = 3
_PENDING = "enrollment"  # the folder of the enrollment in progress, in the state dir


def _csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_key_and_csr(common_name: str) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key and a CSR for it (both PEM). The key never leaves the device."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_pem(key), _csr(key, common_name)


def _stored_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The pending enrollment's key, or None when there is none (or it is damaged: then a new
    one is made, and the server sees a new device)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("the key of the enrollment in progress (%s) is damaged; making a new one", path)
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _stored_csr(path: Path, key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes | None:
    """The pending enrollment's CSR, if it is for ``key`` and names ``common_name``."""
    try:
        pem = path.read_bytes()
        csr = x509.load_pem_x509_csr(pem)
    except (OSError, ValueError):
        return None
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    same_key = csr.public_key() == key.public_key()
    return pem if same_key and names and names[0].value == common_name else None


def pending_enrollment(state_dir: Path, common_name: str) -> tuple[bytes, bytes]:
    """The key and CSR (PEM) to enroll with: those of the last attempt when there was one (the
    server may have answered it; asking again with the same key gets the same identity), else
    new ones. Both are on disk (``enrollment/``, 0600, written atomically) before they are
    returned, so they are what a retry after any kill finds. A new name keeps the key.

    Raises:
        OSError: the state dir cannot be written.
    """
    folder = state_dir / _PENDING
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, csr_path = folder / "device.key", folder / "device.csr"
    key = _stored_key(key_path)
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(key_path, _key_pem(key), mode=0o600)
    csr_pem = _stored_csr(csr_path, key, common_name)
    if csr_pem is None:
        csr_pem = _csr(key, common_name)
        atomic_write(csr_path, csr_pem, mode=0o600)
    return _key_pem(key), csr_pem


def clear_pending_enrollment(state_dir: Path) -> None:
    """Forget the enrollment in progress once the identity is saved (its key is the identity's
    now), temp files of a kill included; what cannot be removed is logged, never raised."""
    folder = state_dir / _PENDING
    try:
        for path in list(folder.iterdir()):
            path.unlink()
        folder.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot remove the finished enrollment's files in %s: %s", folder, exc)


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
