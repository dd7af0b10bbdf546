"""Root and release keys, key lists, and manifest signing."""

from __future__ import annotations

from fleet_server.signing.keys import KeyStore, ManifestSigner, sign_envelope

__all__ = ["KeyStore", "ManifestSigner", "sign_envelope"]
