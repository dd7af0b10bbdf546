"""Verify a signed manifest. Pure: takes bytes, keys and the time; returns a manifest or raises.

The rules (the update issue extends them with key lists, thresholds and explicit rollbacks):

* the envelope's payload type must be the manifest type;
* at least one signature over PAE(type, payload) must verify with a pinned release key
  (the key id is only a hint and is not trusted);
* the manifest must be meant for this fleet, name a plausible model, hash and size;
* it must not have expired, allowing ``CLOCK_SKEW_S`` for devices whose clock drifts; a device
  whose clock reads before 2024 has no usable time and skips the expiry check (logged by the
  caller) rather than refusing every update forever;
* its release counter must not be lower than the installed one for the same model
  (anti-rollback); an equal counter is only accepted for the very same artifact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from agent.errors import ManifestError
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE, pae

__all__ = ["CLOCK_SKEW_S", "MAX_ENVELOPE_BYTES", "InstalledModel", "verify_manifest"]

CLOCK_SKEW_S = 300
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_SIGNATURES = 16
_CLOCK_SANE_AFTER = 1_704_067_200  # 2024-01-01T00:00:00Z
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class InstalledModel:
    """What the device runs now for one model name."""

    release_counter: int
    sha256: str


def _check_signature(envelope: manifest_pb2.Envelope, keys: Sequence[bytes]) -> None:
    if not envelope.signatures:
        raise ManifestError("manifest is not signed")
    if len(envelope.signatures) > MAX_SIGNATURES:
        raise ManifestError(f"manifest carries {len(envelope.signatures)} signatures; refusing")
    message = pae(envelope.payload_type, envelope.payload)
    public_keys = [Ed25519PublicKey.from_public_bytes(k) for k in keys]
    for signature in envelope.signatures:
        for key in public_keys:
            try:
                key.verify(signature.sig, message)
            except InvalidSignature:
                continue
            return
    raise ManifestError(
        "manifest signature does not verify with any pinned release key; refusing the update"
    )


def verify_manifest(
    envelope_bytes: bytes,
    *,
    trusted_keys: Sequence[bytes],
    fleet_id: str,
    now: float,
    installed: Mapping[str, InstalledModel],
    max_artifact_bytes: int,
) -> manifest_pb2.Manifest:
    """Return the manifest inside ``envelope_bytes`` if it may be installed.

    Raises:
        ManifestError: with the reason, for any rule above that the manifest breaks.
    """
    if len(envelope_bytes) > MAX_ENVELOPE_BYTES:
        raise ManifestError(f"envelope is {len(envelope_bytes)} bytes (limit {MAX_ENVELOPE_BYTES})")
    if not trusted_keys:
        raise ManifestError("no release key is pinned; enroll the device first")
    envelope = manifest_pb2.Envelope()
    try:
        envelope.ParseFromString(envelope_bytes)
    except DecodeError as exc:
        raise ManifestError("envelope is not a valid protobuf message") from exc
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
        raise ManifestError(f"payload type {envelope.payload_type!r} is not a manifest")
    _check_signature(envelope, trusted_keys)

    manifest = manifest_pb2.Manifest()
    try:
        manifest.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise ManifestError("signed payload is not a valid manifest") from exc
    if manifest.fleet_id != fleet_id:
        raise ManifestError(
            f"manifest is for fleet {manifest.fleet_id!r}, this device is in {fleet_id!r}"
        )
    if not _NAME.match(manifest.model_name):
        raise ManifestError(f"manifest names an invalid model {manifest.model_name!r}")
    if not _SHA256.match(manifest.sha256):
        raise ManifestError(f"manifest sha256 {manifest.sha256!r} is not a hex sha256 digest")
    if manifest.size == 0 or manifest.size > max_artifact_bytes:
        raise ManifestError(
            f"artifact size {manifest.size} is outside 1..{max_artifact_bytes} bytes"
        )
    if manifest.HasField("cpu_fallback"):
        fallback = manifest.cpu_fallback
        if not _SHA256.match(fallback.sha256) or fallback.artifact_id != fallback.sha256:
            raise ManifestError("manifest names an implausible CPU fallback artifact")
        if fallback.size == 0 or fallback.size > max_artifact_bytes:
            raise ManifestError(
                f"CPU fallback size {fallback.size} is outside 1..{max_artifact_bytes} bytes"
            )
    clock_usable = now >= _CLOCK_SANE_AFTER
    if manifest.expires_unix and clock_usable and now > manifest.expires_unix + CLOCK_SKEW_S:
        raise ManifestError(
            f"manifest for {manifest.model_name} {manifest.version} expired at "
            f"{manifest.expires_unix} (now {int(now)}); ask the server to re-sign it"
        )
    current = installed.get(manifest.model_name)
    if current is not None:
        if manifest.release_counter < current.release_counter:
            raise ManifestError(
                f"manifest release {manifest.release_counter} of {manifest.model_name} is older "
                f"than installed release {current.release_counter} (anti-rollback); refusing"
            )
        if (
            manifest.release_counter == current.release_counter
            and manifest.sha256 != current.sha256
        ):
            raise ManifestError(
                f"release {manifest.release_counter} of {manifest.model_name} names a different "
                "artifact than the one installed under the same release; refusing"
            )
    return manifest
