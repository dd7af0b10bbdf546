"""The trust chain, pure: root keys -> key list -> release keys -> manifests. No I/O.

* A key list is a :class:`KeyList` in a DSSE-style envelope, signed by its root keys.
* At enrollment the device pins the key list the server hands out: it must be signed by the
  threshold of the root keys it names (trust on first use, over the enrollment channel).
* Later key lists replace it only if their version is higher, they have not expired, and they
  are signed by the threshold of the *pinned* root keys and by the threshold of their *own* root
  keys (so a root rotation needs both the old and the new owners, as in TUF).
* A manifest is trusted when at least ``release_threshold`` distinct, unexpired release keys of
  the pinned key list signed it. Key ids in signatures are hints only: every signature is tried
  against every candidate key, and each key counts once.
* Key ids the key list revokes (a stolen release key) never count as release keys, even within
  their expiry; the device's release floors remember which keys set them, so the root keys can
  undo a floor that only revoked keys raised (``agent.updates.verify``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from agent.errors import ManifestError
from protos import manifest_pb2
from protos.envelope import KEYLIST_PAYLOAD_TYPE, keyid, pae

__all__ = [
    "CLOCK_SANE_AFTER",
    "CLOCK_SKEW_S",
    "MAX_ENVELOPE_BYTES",
    "MAX_REVOKED",
    "TrustedKeys",
    "clock_is_sane",
    "count_signers",
    "pin_keylist",
    "update_keylist",
]

CLOCK_SKEW_S = 300
CLOCK_SANE_AFTER = 1_704_067_200  # 2024-01-01T00:00:00Z: earlier means the clock was never set
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_SIGNATURES = 16
MAX_KEYS = 32
MAX_REVOKED = 64  # revoked key ids a key list carries forward
_KEYID = re.compile(r"[0-9a-f]{16}")


def clock_is_sane(now: float) -> bool:
    """False for a device whose clock was never set (no RTC, no NTP yet)."""
    return now >= CLOCK_SANE_AFTER


def expired(expires_unix: int, now: float) -> bool:
    """True when ``expires_unix`` (0 = never) has passed, allowing clock skew.

    A device without a sane clock cannot tell and treats nothing as expired: refusing every
    update forever would strand it, and signatures and counters still protect it.
    """
    return bool(expires_unix) and clock_is_sane(now) and now > expires_unix + CLOCK_SKEW_S


@dataclass(frozen=True)
class TrustedKeys:
    """A verified key list: what the device trusts now."""

    version: int
    expires_unix: int
    fleet_id: str
    root: Mapping[str, bytes]
    root_threshold: int
    release: Mapping[str, tuple[bytes, int]]  # keyid -> (public key, expires_unix)
    release_threshold: int
    envelope: bytes  # the signed key list, to persist and hand on
    revoked: frozenset[str] = frozenset()  # key ids that sign nothing any more

    def release_keys(self, now: float) -> dict[str, bytes]:
        """The release keys that have not expired at ``now`` and are not revoked."""
        return {
            k: pub
            for k, (pub, exp) in self.release.items()
            if not expired(exp, now) and k not in self.revoked
        }


def parse_envelope(raw: bytes, payload_type: str, what: str) -> manifest_pb2.Envelope:
    """Decode an envelope of the expected type.

    Raises:
        ManifestError: too large, undecodable, of another type, or with too many signatures.
    """
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise ManifestError(f"{what} envelope is {len(raw)} bytes (limit {MAX_ENVELOPE_BYTES})")
    envelope = manifest_pb2.Envelope()
    try:
        envelope.ParseFromString(raw)
    except DecodeError as exc:
        raise ManifestError(f"{what} envelope is not a valid protobuf message") from exc
    if envelope.payload_type != payload_type:
        raise ManifestError(f"payload type {envelope.payload_type!r} is not a {what}")
    if len(envelope.signatures) > MAX_SIGNATURES:
        raise ManifestError(f"{what} carries {len(envelope.signatures)} signatures; refusing")
    return envelope


def count_signers(envelope: manifest_pb2.Envelope, keys: Mapping[str, bytes]) -> set[str]:
    """The ids of the distinct ``keys`` whose signature over PAE(type, payload) verifies."""
    message = pae(envelope.payload_type, envelope.payload)
    signers: set[str] = set()
    candidates = {k: Ed25519PublicKey.from_public_bytes(pub) for k, pub in keys.items()}
    for signature in envelope.signatures:
        for key_id, key in candidates.items():
            if key_id in signers:
                continue
            try:
                key.verify(signature.sig, message)
            except InvalidSignature:
                continue
            signers.add(key_id)
            break
    return signers


def _decode_keylist(envelope: manifest_pb2.Envelope) -> manifest_pb2.KeyList:
    keylist = manifest_pb2.KeyList()
    try:
        keylist.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise ManifestError("signed payload is not a key list") from exc
    if len(keylist.root_keys) > MAX_KEYS or len(keylist.release_keys) > MAX_KEYS:
        raise ManifestError(f"key list names more than {MAX_KEYS} keys")
    if len(keylist.revoked_keyids) > MAX_REVOKED:
        raise ManifestError(
            f"key list revokes {len(keylist.revoked_keyids)} keys (limit {MAX_REVOKED})"
        )
    for revoked in keylist.revoked_keyids:
        if not _KEYID.fullmatch(revoked):
            raise ManifestError(f"key list revokes a malformed key id {revoked[:40]!r}")
    if not 1 <= keylist.root_threshold <= len(keylist.root_keys):
        raise ManifestError(
            f"root threshold {keylist.root_threshold} with {len(keylist.root_keys)} root keys"
        )
    if not 1 <= keylist.release_threshold <= len(keylist.release_keys):
        raise ManifestError(
            f"release threshold {keylist.release_threshold} with "
            f"{len(keylist.release_keys)} release keys"
        )
    for key in (*keylist.root_keys, *keylist.release_keys):
        if len(key.public_key) != 32 or key.keyid != keyid(key.public_key):
            raise ManifestError(f"key list names a malformed key {key.keyid!r}")
    return keylist


def _trusted(keylist: manifest_pb2.KeyList, raw: bytes) -> TrustedKeys:
    return TrustedKeys(
        version=keylist.version,
        expires_unix=keylist.expires_unix,
        fleet_id=keylist.fleet_id,
        root={k.keyid: k.public_key for k in keylist.root_keys},
        root_threshold=keylist.root_threshold,
        release={k.keyid: (k.public_key, k.expires_unix) for k in keylist.release_keys},
        release_threshold=keylist.release_threshold,
        envelope=raw,
        revoked=frozenset(keylist.revoked_keyids),
    )


def _require(signers: set[str], threshold: int, what: str) -> None:
    if len(signers) < threshold:
        raise ManifestError(
            f"{what}: {len(signers)} valid signature(s), {threshold} required; refusing"
        )


def pin_keylist(raw: bytes, *, fleet_id: str, now: float) -> TrustedKeys:
    """Verify the key list a device pins at enrollment (self-signed by its root threshold).

    Raises:
        ManifestError: malformed, for another fleet, expired, or below its root threshold.
    """
    envelope = parse_envelope(raw, KEYLIST_PAYLOAD_TYPE, "key list")
    keylist = _decode_keylist(envelope)
    if keylist.fleet_id != fleet_id:
        raise ManifestError(f"key list is for fleet {keylist.fleet_id!r}, not {fleet_id!r}")
    if expired(keylist.expires_unix, now):
        raise ManifestError(f"key list version {keylist.version} has expired")
    roots = {k.keyid: k.public_key for k in keylist.root_keys}
    _require(count_signers(envelope, roots), keylist.root_threshold, "key list")
    return _trusted(keylist, raw)


def update_keylist(current: TrustedKeys, raw: bytes, *, now: float) -> TrustedKeys:
    """The key list that replaces ``current``, or ``current`` itself when ``raw`` is not newer.

    Raises:
        ManifestError: a newer key list that is not signed by the threshold of the pinned root
            keys and of its own root keys, is for another fleet, or has expired.
    """
    envelope = parse_envelope(raw, KEYLIST_PAYLOAD_TYPE, "key list")
    keylist = _decode_keylist(envelope)
    if keylist.version <= current.version:
        return current
    if keylist.fleet_id != current.fleet_id:
        raise ManifestError(f"key list is for fleet {keylist.fleet_id!r}, not {current.fleet_id!r}")
    if expired(keylist.expires_unix, now):
        raise ManifestError(f"key list version {keylist.version} has expired")
    _require(
        count_signers(envelope, current.root),
        current.root_threshold,
        f"key list version {keylist.version} by the pinned root keys",
    )
    new_roots = {k.keyid: k.public_key for k in keylist.root_keys}
    _require(
        count_signers(envelope, new_roots),
        keylist.root_threshold,
        f"key list version {keylist.version} by its own root keys",
    )
    return _trusted(keylist, raw)
