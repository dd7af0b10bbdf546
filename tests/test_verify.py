"""Manifest verification (pure): signatures, fleet, expiry, anti-rollback, tampering."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ManifestError
from agent.updates.verify import CLOCK_SKEW_S, InstalledModel, verify_manifest
from fleet_server.signing.keys import ReleaseSigner
from protos import manifest_pb2

NOW = 1_790_000_000.0
SIGNER = ReleaseSigner(Ed25519PrivateKey.generate())
OTHER = ReleaseSigner(Ed25519PrivateKey.generate())
SHA = "ab" * 32


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
    keys: tuple[bytes, ...] = (SIGNER.public_key,),
    now: float = NOW,
    installed: dict[str, InstalledModel] | None = None,
) -> manifest_pb2.Manifest:
    return verify_manifest(
        raw,
        trusted_keys=keys,
        fleet_id="fleet",
        now=now,
        installed=installed or {},
        max_artifact_bytes=10_000,
    )


def signed(m: manifest_pb2.Manifest, signer: ReleaseSigner = SIGNER) -> bytes:
    return signer.sign(m).SerializeToString()


def test_a_good_manifest_verifies() -> None:
    assert verify(signed(manifest())).version == "1.0.0"


def test_signature_by_an_unpinned_key_is_refused() -> None:
    with pytest.raises(ManifestError, match="does not verify with any pinned release key"):
        verify(signed(manifest(), OTHER))


def test_any_pinned_key_may_sign() -> None:
    assert verify(signed(manifest(), OTHER), keys=(SIGNER.public_key, OTHER.public_key))


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


def test_no_pinned_key_means_nothing_verifies() -> None:
    with pytest.raises(ManifestError, match="no release key"):
        verify(signed(manifest()), keys=())


def test_real_clock_smoke() -> None:
    m = manifest(created_unix=int(time.time()), expires_unix=int(time.time()) + 60)
    assert verify(signed(m), now=time.time())
