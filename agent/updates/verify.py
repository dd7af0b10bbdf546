"""Verify a signed manifest. Pure: takes bytes, the trusted keys and the time; returns a
manifest or raises.

The rules (see docs/security.md):

* the envelope's payload type must be the manifest type;
* at least ``release_threshold`` distinct, unexpired release keys of the pinned key list must
  have signed PAE(type, payload); key ids are hints only; the key list itself must not have
  expired;
* the manifest must be meant for this fleet, name a plausible model, hash and size (and a
  plausible CPU fallback, if any);
* it must not have expired, allowing ``CLOCK_SKEW_S``; a device whose clock reads before 2024
  has no usable time and skips expiry checks rather than refusing every update forever;
* its release counter must not be lower than the installed one for the same model
  (anti-rollback); an equal counter is only accepted for the very same artifact;
* unless it is an explicit rollback, which instead needs the root keys' threshold (release keys
  alone cannot send a device back to an older release), and is refused on a device above the
  release it was made at (``rollback_from``: a replayed rollback);
* except for a recovery from a stolen release key (TUF's fast-forward attack): an explicit
  rollback with ``recovery_keylist_version`` V is also accepted above ``rollback_from`` when the
  device's key list is at least version V and every key that signed the device's floor (the
  release counter; ``InstalledModel.floor_keyids``) is revoked by that key list. A later
  legitimate floor carries keys that are not revoked, so a recovery cannot be replayed over it,
  and a floor of unknown origin (a journal from an older agent) is never undone this way.

The verified manifest comes back with the ids of the keys that signed it (root keys for an
explicit rollback): the device records them with the floor the manifest sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agent.errors import ManifestError
from agent.updates.trust import (
    CLOCK_SKEW_S,
    MAX_ENVELOPE_BYTES,
    TrustedKeys,
    count_signers,
    expired,
    parse_envelope,
)
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE
from protos.names import is_name, is_sha256

__all__ = [
    "CLOCK_SKEW_S",
    "MAX_ENVELOPE_BYTES",
    "InstalledModel",
    "VerifiedRelease",
    "verify_manifest",
    "verify_release",
]


@dataclass(frozen=True)
class InstalledModel:
    """What the device runs now for one model name."""

    release_counter: int
    sha256: str
    # The keys that signed the manifest which set ``release_counter`` (root keys for an explicit
    # rollback); empty when unknown (journals of agents from before they were kept).
    floor_keyids: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifiedRelease:
    """A manifest that may be installed, who signed it, and whether it is a recovery."""

    manifest: manifest_pb2.Manifest
    signers: tuple[str, ...]  # sorted key ids: release keys, or root keys for a rollback
    # Accepted above the device's floor because only revoked keys had set that floor: the
    # floor drops to the recovery's, and the release it replaces is not a last-known-good.
    recovery: bool = False


def verify_manifest(
    envelope_bytes: bytes,
    *,
    trust: TrustedKeys,
    fleet_id: str,
    now: float,
    installed: Mapping[str, InstalledModel],
    max_artifact_bytes: int,
) -> manifest_pb2.Manifest:
    """Return the manifest inside ``envelope_bytes`` if it may be installed.

    Raises:
        ManifestError: with the reason, for any rule above that the manifest breaks.
    """
    return verify_release(
        envelope_bytes,
        trust=trust,
        fleet_id=fleet_id,
        now=now,
        installed=installed,
        max_artifact_bytes=max_artifact_bytes,
    ).manifest


def verify_release(
    envelope_bytes: bytes,
    *,
    trust: TrustedKeys,
    fleet_id: str,
    now: float,
    installed: Mapping[str, InstalledModel],
    max_artifact_bytes: int,
) -> VerifiedRelease:
    """The manifest inside ``envelope_bytes``, if it may be installed, with its signers.

    Raises:
        ManifestError: with the reason, for any rule above that the manifest breaks.
    """
    envelope = parse_envelope(envelope_bytes, MANIFEST_PAYLOAD_TYPE, "manifest")
    if not envelope.signatures:
        raise ManifestError("manifest is not signed")
    if expired(trust.expires_unix, now):
        raise ManifestError(
            f"the pinned key list (version {trust.version}) has expired; the fleet's root key "
            "holders must publish a new one"
        )
    manifest = manifest_pb2.Manifest()
    try:
        manifest.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise ManifestError("signed payload is not a valid manifest") from exc
    if manifest.explicit_rollback:
        signers = count_signers(envelope, trust.root)
        if len(signers) < trust.root_threshold:
            raise ManifestError(
                "an explicit rollback must be signed by the root keys "
                f"({len(signers)} of {trust.root_threshold} required); refusing it"
            )
    else:
        signers = count_signers(envelope, trust.release_keys(now))
        if len(signers) < trust.release_threshold:
            raise ManifestError(
                "manifest signature does not verify with enough pinned release keys "
                f"({len(signers)} of {trust.release_threshold} required); refusing the update"
            )
    if manifest.fleet_id != fleet_id:
        raise ManifestError(
            f"manifest is for fleet {manifest.fleet_id!r}, this device is in {fleet_id!r}"
        )
    if not is_name(manifest.model_name):
        raise ManifestError(f"manifest names an invalid model {manifest.model_name!r}")
    if not is_sha256(manifest.sha256):
        raise ManifestError(f"manifest sha256 {manifest.sha256!r} is not a hex sha256 digest")
    if manifest.size == 0 or manifest.size > max_artifact_bytes:
        raise ManifestError(
            f"artifact size {manifest.size} is outside 1..{max_artifact_bytes} bytes"
        )
    if manifest.HasField("cpu_fallback"):
        fallback = manifest.cpu_fallback
        if not is_sha256(fallback.sha256) or fallback.artifact_id != fallback.sha256:
            raise ManifestError("manifest names an implausible CPU fallback artifact")
        if fallback.size == 0 or fallback.size > max_artifact_bytes:
            raise ManifestError(
                f"CPU fallback size {fallback.size} is outside 1..{max_artifact_bytes} bytes"
            )
    if manifest.HasField("compressed"):
        packed = manifest.compressed
        if not is_sha256(packed.sha256) or packed.artifact_id != packed.sha256:
            raise ManifestError("manifest names an implausible compressed artifact")
        if packed.size == 0 or packed.size > max_artifact_bytes:
            raise ManifestError(f"compressed size {packed.size} is out of bounds")
    if manifest.HasField("smoke"):
        test = manifest.smoke
        sample = test.sample
        if not is_sha256(sample.sha256) or sample.artifact_id != sample.sha256:
            raise ManifestError("manifest names an implausible smoke-test sample")
        if sample.size > max_artifact_bytes or len(test.top_indices) != len(test.top_scores):
            raise ManifestError("manifest's smoke test is malformed")
    if expired(manifest.expires_unix, now):
        raise ManifestError(
            f"manifest for {manifest.model_name} {manifest.version} expired at "
            f"{manifest.expires_unix} (now {int(now)}); ask the server to re-sign it"
        )
    current = installed.get(manifest.model_name)
    recovery = False
    if current is not None and manifest.explicit_rollback:
        if current.release_counter > manifest.rollback_from:
            _require_recovery(manifest, current, trust)
            recovery = True
    elif current is not None:
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
    return VerifiedRelease(manifest, tuple(sorted(signers)), recovery)


def _require_recovery(
    manifest: manifest_pb2.Manifest, current: InstalledModel, trust: TrustedKeys
) -> None:
    """Raise unless a root-signed rollback from below the device's floor is a recovery from
    revoked keys (see the module docstring)."""
    name, floor, since = manifest.model_name, current.release_counter, manifest.rollback_from
    wanted = manifest.recovery_keylist_version
    if not wanted:
        raise ManifestError(
            f"explicit rollback of {name} was made at release {since}; this device is at "
            f"release {floor} (a replayed rollback); refusing"
        )
    what = f"recovery of {name} from release {floor} (made at release {since})"
    if trust.version < wanted:
        raise ManifestError(
            f"{what} needs key list version {wanted}; this device has version {trust.version} "
            "and adopts the newer one at a check-in; refusing for now"
        )
    if not current.floor_keyids:
        raise ManifestError(
            f"{what}: the floor's signers are unknown (journal from an older agent), so it "
            "cannot be undone by a recovery; refusing (removing the device's update journal, "
            "STATE_DIR/active.json, resets its floors)"
        )
    kept = sorted(k for k in current.floor_keyids if k not in trust.revoked)
    if kept:
        raise ManifestError(
            f"{what}: release {floor} was signed by keys that key list version "
            f"{trust.version} does not revoke ({', '.join(kept)}; a replayed recovery?); refusing"
        )
