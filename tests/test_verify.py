"""Manifest verification (pure): signatures, fleet, expiry, anti-rollback, tampering."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ManifestError
from agent.updates.trust import TrustedKeys, pin_keylist
from agent.updates.verify import CLOCK_SKEW_S, InstalledModel, verify_manifest
from fleet_server.signing.keys import ManifestSigner, public_bytes, sign_envelope
from protos import manifest_pb2
from protos.envelope import KEYLIST_PAYLOAD_TYPE, keyid

NOW = 1_790_000_000.0
ROOT = Ed25519PrivateKey.generate()
RELEASE = Ed25519PrivateKey.generate()
SECOND = Ed25519PrivateKey.generate()
SIGNER = ManifestSigner([RELEASE])
OTHER = ManifestSigner([SECOND])
SHA = "ab" * 32


def public(key: Ed25519PrivateKey, expires: int = 0) -> manifest_pb2.PublicKey:
    raw = public_bytes(key)
    return manifest_pb2.PublicKey(keyid=keyid(raw), public_key=raw, expires_unix=expires)


def trust_in(
    *release: Ed25519PrivateKey,
    threshold: int = 1,
    expires: int = int(NOW) + 3600,
    release_expires: int = 0,
    pinned_at: float = NOW - 60,
) -> TrustedKeys:
    keylist = manifest_pb2.KeyList(
        version=1,
        expires_unix=expires,
        fleet_id="fleet",
        root_keys=[public(ROOT)],
        root_threshold=1,
        release_keys=[public(k, release_expires) for k in release],
        release_threshold=threshold,
    )
    envelope = sign_envelope(KEYLIST_PAYLOAD_TYPE, keylist.SerializeToString(), [ROOT])
    return pin_keylist(envelope.SerializeToString(), fleet_id="fleet", now=pinned_at)


def manifest(**overrides: object) -> manifest_pb2.Manifest:
    fields: dict[str, object] = {
        "model_name": "mobilenet",
        "version": "1.0.0",
        "release_counter": 5,
        "variant": "int8",
        "sha256": SHA,
        "size": 1000,
        "artifact_id": SHA,
        "created_unix": int(NOW) - 10,
        "expires_unix": int(NOW) + 3600,
        "fleet_id": "fleet",
    }
    fields.update(overrides)
    return manifest_pb2.Manifest(**fields)  # type: ignore[arg-type]


def verify(
    raw: bytes,
    *,
    trust: TrustedKeys | None = None,
    now: float = NOW,
    installed: dict[str, InstalledModel] | None = None,
) -> manifest_pb2.Manifest:
    return verify_manifest(
        raw,
        trust=trust or trust_in(RELEASE),
        fleet_id="fleet",
        now=now,
        installed=installed or {},
        max_artifact_bytes=10_000,
    )


def signed(m: manifest_pb2.Manifest, signer: ManifestSigner = SIGNER) -> bytes:
    return signer.sign(m).SerializeToString()


def test_a_good_manifest_verifies() -> None:
    assert verify(signed(manifest())).version == "1.0.0"


def test_signature_by_an_unpinned_key_is_refused() -> None:
    with pytest.raises(ManifestError, match="does not verify with enough pinned release keys"):
        verify(signed(manifest(), OTHER))


def test_any_pinned_key_may_sign() -> None:
    assert verify(signed(manifest(), OTHER), trust=trust_in(RELEASE, SECOND))


def test_a_release_threshold_needs_that_many_distinct_keys() -> None:
    two = trust_in(RELEASE, SECOND, threshold=2)
    with pytest.raises(ManifestError, match="1 of 2 required"):
        verify(signed(manifest()), trust=two)
    doubled = SIGNER.sign(manifest())
    doubled.signatures.extend(list(doubled.signatures))  # the same key twice counts once
    with pytest.raises(ManifestError, match="1 of 2 required"):
        verify(doubled.SerializeToString(), trust=two)
    both = ManifestSigner([RELEASE, SECOND]).sign(manifest()).SerializeToString()
    assert verify(both, trust=two)


def test_an_expired_release_key_no_longer_signs() -> None:
    stale = trust_in(RELEASE, release_expires=int(NOW) - CLOCK_SKEW_S - 1)
    with pytest.raises(ManifestError, match="0 of 1 required"):
        verify(signed(manifest()), trust=stale)


def test_an_expired_key_list_stops_updates() -> None:
    old = trust_in(RELEASE, expires=int(NOW) - CLOCK_SKEW_S - 1, pinned_at=NOW - 3 * CLOCK_SKEW_S)
    with pytest.raises(ManifestError, match=r"pinned key list .* has expired"):
        verify(signed(manifest()), trust=old)


def test_unsigned_envelope_is_refused() -> None:
    envelope = SIGNER.sign(manifest())
    del envelope.signatures[:]
    with pytest.raises(ManifestError, match="not signed"):
        verify(envelope.SerializeToString())


def test_payload_type_is_bound_by_the_signature() -> None:
    envelope = SIGNER.sign(manifest())
    envelope.payload_type = "application/other"
    with pytest.raises(ManifestError, match="not a manifest"):
        verify(envelope.SerializeToString())


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_change_to_the_signed_payload_is_refused(data: st.DataObject) -> None:
    envelope = SIGNER.sign(manifest())
    payload = bytearray(envelope.payload)
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    payload[index] ^= flip
    envelope.payload = bytes(payload)
    with pytest.raises(ManifestError):
        verify(envelope.SerializeToString())


def test_manifest_for_another_fleet_is_refused() -> None:
    with pytest.raises(ManifestError, match="for fleet 'other'"):
        verify(signed(manifest(fleet_id="other")))


def test_expiry_allows_clock_skew_then_refuses() -> None:
    expires = int(NOW) - CLOCK_SKEW_S + 1
    assert verify(signed(manifest(expires_unix=expires)))
    with pytest.raises(ManifestError, match="expired"):
        verify(signed(manifest(expires_unix=int(NOW) - CLOCK_SKEW_S - 1)))


def test_a_device_without_a_sane_clock_skips_expiry() -> None:
    # A board that booted without RTC or NTP reads 1970; refusing every update forever would
    # strand it, and the signature and counter checks still hold.
    assert verify(signed(manifest(expires_unix=1000)), now=100.0)
    unset_clock = trust_in(RELEASE, expires=1000, pinned_at=100.0)
    assert verify(signed(manifest()), trust=unset_clock, now=100.0)


def test_older_release_is_refused_anti_rollback() -> None:
    installed = {"mobilenet": InstalledModel(release_counter=9, sha256="cd" * 32)}
    with pytest.raises(ManifestError, match="older than installed release 9"):
        verify(signed(manifest(release_counter=7)), installed=installed)


def test_same_release_with_another_artifact_is_refused() -> None:
    installed = {"mobilenet": InstalledModel(release_counter=5, sha256="cd" * 32)}
    with pytest.raises(ManifestError, match="different artifact"):
        verify(signed(manifest()), installed=installed)


def test_same_release_same_artifact_is_accepted_idempotently() -> None:
    installed = {"mobilenet": InstalledModel(release_counter=5, sha256=SHA)}
    assert verify(signed(manifest()), installed=installed).sha256 == SHA


def test_counters_of_other_models_do_not_interfere() -> None:
    installed = {"other": InstalledModel(release_counter=99, sha256=SHA)}
    assert verify(signed(manifest(release_counter=1)), installed=installed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": 0}, "outside"),
        ({"size": 10_001}, "outside"),
        ({"sha256": "xyz"}, "not a hex sha256"),
        ({"model_name": "../etc"}, "invalid model"),
    ],
)
def test_implausible_fields_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        verify(signed(manifest(**overrides)))


def test_garbage_and_oversized_envelopes_are_refused() -> None:
    with pytest.raises(ManifestError):
        verify(b"\xff\xff\xff garbage")
    with pytest.raises(ManifestError, match="bytes"):
        verify(b"\0" * 70_000)
    with pytest.raises(ManifestError, match="not a manifest"):
        verify(trust_in(RELEASE).envelope)  # a signed key list is not a manifest


def test_real_clock_smoke() -> None:
    m = manifest(created_unix=int(time.time()), expires_unix=int(time.time()) + 60)
    fresh = trust_in(RELEASE, expires=int(time.time()) + 3600)
    assert verify(signed(m), trust=fresh, now=time.time())


def test_an_explicit_rollback_needs_the_root_keys_not_a_release_key() -> None:
    installed = {"mobilenet": InstalledModel(release_counter=9, sha256="cd" * 32)}
    rollback = manifest(release_counter=3, explicit_rollback=True, rollback_from=9)
    with pytest.raises(ManifestError, match="must be signed by the root keys"):
        verify(signed(rollback), installed=installed)
    by_root = ManifestSigner([ROOT]).sign(rollback).SerializeToString()
    assert verify(by_root, installed=installed).release_counter == 3


def test_an_old_explicit_rollback_cannot_be_replayed_after_newer_releases() -> None:
    made_at_9 = manifest(release_counter=3, explicit_rollback=True, rollback_from=9)
    by_root = ManifestSigner([ROOT]).sign(made_at_9).SerializeToString()
    newer = {"mobilenet": InstalledModel(release_counter=10, sha256="cd" * 32)}
    with pytest.raises(ManifestError, match="replayed rollback"):
        verify(by_root, installed=newer)
