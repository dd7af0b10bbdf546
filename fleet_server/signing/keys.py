"""The Ed25519 release key and DSSE-style manifest signing.

In the embedded default the server holds the release key online and signs at push time. (Root
keys, thresholds, key lists and offline signing come with the signed-delivery issue.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.errors import DataDirError
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE, pae

__all__ = ["ReleaseSigner", "generate_release_key"]


def generate_release_key() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (stored 0600)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class ReleaseSigner:
    """Signs manifests with one release key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.keyid = hashlib.sha256(self.public_key).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path) -> ReleaseSigner:
        """Load a PEM private key.

        Raises:
            DataDirError: unreadable or not an Ed25519 key.
        """
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise DataDirError(f"cannot load release key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise DataDirError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, manifest: manifest_pb2.Manifest) -> manifest_pb2.Envelope:
        """Wrap ``manifest`` in an envelope signed over PAE(type, payload)."""
        payload = manifest.SerializeToString(deterministic=True)
        signature = self._key.sign(pae(MANIFEST_PAYLOAD_TYPE, payload))
        return manifest_pb2.Envelope(
            payload_type=MANIFEST_PAYLOAD_TYPE,
            payload=payload,
            signatures=[manifest_pb2.Signature(keyid=self.keyid, sig=signature)],
        )
