"""What a signed manifest in use needs after a rotation or as its expiry nears: nothing, more
signatures (the same payload signed by the current release key), or a re-issue (the same
manifest with a new creation and expiry time, signed afresh). Decisions over values, no I/O:
:mod:`fleet_server.signing.maintainer` reads the manifests, signs and stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import DecodeError

from agent.updates.trust import MAX_SIGNATURES, count_signers
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE

__all__ = ["Action", "Verdict", "is_reissue", "judge", "merged", "reissued", "signing_keys"]

_DAY = 86400


class Action(StrEnum):
    KEEP = "keep"
    ADD_SIGNATURES = "add signatures"
    REISSUE = "re-issue"
    # No signature verifies with a key of the current list: changed outside the server (an
    # edited database), or signed by a key whose overlap ended. Never signed: reported.
    UNVERIFIED = "unverified"


@dataclass(frozen=True)
class Verdict:
    """What to do with one manifest, and why."""

    action: Action
    reason: str


def signing_keys(keylist: manifest_pb2.KeyList) -> dict[str, bytes]:
    """The release keys that stay: those without an expiry of their own (a rotation gives the
    keys it replaces one, the end of their overlap)."""
    return {k.keyid: k.public_key for k in keylist.release_keys if not k.expires_unix}


def judge(
    envelope: manifest_pb2.Envelope,
    keylist: manifest_pb2.KeyList,
    *,
    now: float,
    renew_ahead_s: float,
) -> Verdict:
    """What a stored manifest envelope needs so that devices keep accepting it: a re-issue when
    it expires within ``renew_ahead_s``, more signatures when fewer than the release threshold
    of the keys that stay signed it, else nothing. An envelope not signed yet (pushed for
    offline signing) or that holds no manifest is left alone; one that no listed key's
    signature vouches for is never signed (UNVERIFIED)."""
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE or not envelope.signatures:
        return Verdict(Action.KEEP, "not a signed manifest")
    try:
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
    except DecodeError:
        return Verdict(Action.KEEP, "not a manifest")
    revoked = set(keylist.revoked_keyids) & {s.keyid for s in envelope.signatures}
    if revoked:
        # Signed by a key the admins revoked (stolen): a fresh signature would vouch for the
        # release again and devices would keep its floor; a recovery replaces it instead.
        return Verdict(Action.KEEP, f"signed by revoked key(s) {', '.join(sorted(revoked))}")
    listed = {
        k.keyid: k.public_key
        for k in keylist.release_keys
        if not k.expires_unix or k.expires_unix > now
    }
    if not count_signers(envelope, listed):
        # Signing it would vouch for whatever was written into the database.
        return Verdict(
            Action.UNVERIFIED,
            f"no signature verifies with a release key of key list version {keylist.version} "
            "(changed outside the server, or signed by a key whose overlap ended): not signed; "
            "push it again",
        )
    if manifest.expires_unix and manifest.expires_unix - now <= renew_ahead_s:
        days = (manifest.expires_unix - now) / _DAY
        return Verdict(
            Action.REISSUE,
            f"expires in {days:.1f} days, within {renew_ahead_s / _DAY:g} (--renew-ahead-days)",
        )
    keys = signing_keys(keylist)
    signed = len(count_signers(envelope, keys))
    if signed < keylist.release_threshold:
        return Verdict(
            Action.ADD_SIGNATURES,
            f"signed by {signed} of the release keys key list version {keylist.version} keeps; "
            f"{keylist.release_threshold} must sign",
        )
    return Verdict(Action.KEEP, f"signed by {signed} current release key(s)")


def merged(
    envelope: manifest_pb2.Envelope,
    extra: manifest_pb2.Envelope,
    keylist: manifest_pb2.KeyList,
) -> manifest_pb2.Envelope:
    """``envelope`` with ``extra``'s signatures over the same payload added, the old ones kept
    (devices that still hold the previous key list verify with them), at most
    MAX_SIGNATURES: the oldest signatures by keys the key list no longer names go first.

    Raises:
        ValueError: the payloads differ.
    """
    if extra.payload != envelope.payload or extra.payload_type != envelope.payload_type:
        raise ValueError("the signatures to merge are over another payload")
    have = {(s.keyid, s.sig) for s in envelope.signatures}
    new = [s for s in extra.signatures if (s.keyid, s.sig) not in have]
    new_ids = {s.keyid for s in new}
    old = [s for s in envelope.signatures if s.keyid not in new_ids]
    listed = {k.keyid for k in keylist.release_keys}
    room = max(MAX_SIGNATURES - len(new), 0)
    while len(old) > room:
        unlisted = [i for i, s in enumerate(old) if s.keyid not in listed]
        old.pop(unlisted[0] if unlisted else 0)
    return manifest_pb2.Envelope(
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signatures=[*old, *new[:MAX_SIGNATURES]],
    )


def reissued(
    manifest: manifest_pb2.Manifest, *, now: float, lifetime_s: float
) -> manifest_pb2.Manifest:
    """The same manifest, created ``now`` and expiring ``lifetime_s`` later: devices that run
    the release (same model, version and sha256) keep it and download nothing."""
    renewed = manifest_pb2.Manifest()
    renewed.CopyFrom(manifest)
    renewed.created_unix = int(now)
    renewed.expires_unix = int(now + lifetime_s)
    return renewed


def is_reissue(stored: manifest_pb2.Manifest, offered: manifest_pb2.Manifest) -> str:
    """Why ``offered`` is not a re-issue of ``stored`` ("" when it is): the same manifest in
    every field but its creation and expiry times, expiring later. (What an admin signed
    offline from ``edgefleet manifest pending``; an older re-issue attached after a newer one
    would shorten the release's life, and any other change would be a new release.)"""
    a, b = manifest_pb2.Manifest(), manifest_pb2.Manifest()
    a.CopyFrom(stored)
    b.CopyFrom(offered)
    for m in (a, b):
        m.ClearField("created_unix")
        m.ClearField("expires_unix")
    if a != b:
        return "it differs from the stored manifest in more than its creation and expiry times"
    if offered.expires_unix and stored.expires_unix and offered.expires_unix <= stored.expires_unix:
        return "it expires no later than the manifest the server has (an older re-issue?)"
    if not offered.expires_unix and stored.expires_unix:
        return "it has no expiry"
    return ""
