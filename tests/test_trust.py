"""The trust chain (pure): pinning a key list, rotating it, k-of-n root thresholds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ManifestError
from agent.updates.trust import CLOCK_SKEW_S, TrustedKeys, pin_keylist, update_keylist
from fleet_server.signing.keys import public_bytes, sign_envelope
from protos import manifest_pb2
from protos.envelope import KEYLIST_PAYLOAD_TYPE, MANIFEST_PAYLOAD_TYPE, keyid

NOW = 1_790_000_000.0
ROOTS = [Ed25519PrivateKey.generate() for _ in range(3)]
NEW_ROOTS = [Ed25519PrivateKey.generate() for _ in range(3)]
RELEASE = Ed25519PrivateKey.generate()


def public(key: Ed25519PrivateKey) -> manifest_pb2.PublicKey:
    raw = public_bytes(key)
    return manifest_pb2.PublicKey(keyid=keyid(raw), public_key=raw)


def keylist(
    version: int,
    roots: list[Ed25519PrivateKey],
    threshold: int,
    *,
    fleet: str = "fleet",
    expires: int = int(NOW) + 3600,
) -> manifest_pb2.KeyList:
    return manifest_pb2.KeyList(
        version=version,
        expires_unix=expires,
        fleet_id=fleet,
        root_keys=[public(k) for k in roots],
        root_threshold=threshold,
        release_keys=[public(RELEASE)],
        release_threshold=1,
    )


def signed(kl: manifest_pb2.KeyList, signers: list[Ed25519PrivateKey]) -> bytes:
    return sign_envelope(KEYLIST_PAYLOAD_TYPE, kl.SerializeToString(), signers).SerializeToString()


def pinned() -> TrustedKeys:
    return pin_keylist(signed(keylist(1, ROOTS, 2), ROOTS[:2]), fleet_id="fleet", now=NOW)


def test_pinning_needs_the_root_threshold() -> None:
    assert pinned().version == 1
    with pytest.raises(ManifestError, match="1 valid signature"):
        pin_keylist(signed(keylist(1, ROOTS, 2), ROOTS[:1]), fleet_id="fleet", now=NOW)


def test_pinning_refuses_another_fleet_an_expired_list_and_a_manifest() -> None:
    with pytest.raises(ManifestError, match="for fleet 'other'"):
        pin_keylist(signed(keylist(1, ROOTS, 1, fleet="other"), ROOTS), fleet_id="fleet", now=NOW)
    old = keylist(1, ROOTS, 1, expires=int(NOW) - CLOCK_SKEW_S - 1)
    with pytest.raises(ManifestError, match="expired"):
        pin_keylist(signed(old, ROOTS), fleet_id="fleet", now=NOW)
    wrong_type = sign_envelope(
        MANIFEST_PAYLOAD_TYPE, keylist(1, ROOTS, 1).SerializeToString(), ROOTS
    ).SerializeToString()
    with pytest.raises(ManifestError, match="not a key list"):
        pin_keylist(wrong_type, fleet_id="fleet", now=NOW)


def test_impossible_thresholds_are_refused() -> None:
    with pytest.raises(ManifestError, match="root threshold 4 with 3 root keys"):
        pin_keylist(signed(keylist(1, ROOTS, 4), ROOTS), fleet_id="fleet", now=NOW)
    with pytest.raises(ManifestError, match="root threshold 0"):
        pin_keylist(signed(keylist(1, ROOTS, 0), ROOTS), fleet_id="fleet", now=NOW)


def test_a_release_rotation_signed_by_the_root_threshold_is_adopted() -> None:
    newer = update_keylist(pinned(), signed(keylist(2, ROOTS, 2), ROOTS[1:]), now=NOW)
    assert newer.version == 2


def test_a_rotation_below_the_root_threshold_is_refused() -> None:
    with pytest.raises(ManifestError, match="by the pinned root keys"):
        update_keylist(pinned(), signed(keylist(2, ROOTS, 2), ROOTS[2:]), now=NOW)


def test_a_list_signed_by_unknown_keys_is_refused() -> None:
    stranger = [Ed25519PrivateKey.generate() for _ in range(2)]
    with pytest.raises(ManifestError, match="by the pinned root keys"):
        update_keylist(pinned(), signed(keylist(2, stranger, 2), stranger), now=NOW)


def test_a_root_rotation_needs_both_the_old_and_the_new_root_threshold() -> None:
    rotation = keylist(2, NEW_ROOTS, 2)
    with pytest.raises(ManifestError, match="by its own root keys"):
        update_keylist(pinned(), signed(rotation, ROOTS[:2]), now=NOW)
    with pytest.raises(ManifestError, match="by the pinned root keys"):
        update_keylist(pinned(), signed(rotation, NEW_ROOTS[:2]), now=NOW)
    rotated = update_keylist(pinned(), signed(rotation, ROOTS[:2] + NEW_ROOTS[:2]), now=NOW)
    assert set(rotated.root) == {keyid(public_bytes(k)) for k in NEW_ROOTS}
    # From now on only the new roots count.
    with pytest.raises(ManifestError, match="by the pinned root keys"):
        update_keylist(rotated, signed(keylist(3, ROOTS, 2), ROOTS[:2]), now=NOW)


def test_an_older_or_equal_list_is_ignored_not_adopted() -> None:
    current = update_keylist(pinned(), signed(keylist(5, ROOTS, 2), ROOTS[:2]), now=NOW)
    replay = signed(keylist(3, ROOTS, 2), ROOTS[:2])
    assert update_keylist(current, replay, now=NOW) is current


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=3),
    data=st.data(),
)
def test_a_list_is_trusted_exactly_when_k_distinct_roots_signed(
    n: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(min_value=1, max_value=n))
    signers = data.draw(st.lists(st.integers(min_value=0, max_value=n - 1), max_size=4))
    strangers = data.draw(st.integers(min_value=0, max_value=2))
    keys = [ROOTS[i] for i in signers] + [Ed25519PrivateKey.generate() for _ in range(strangers)]
    raw = signed(keylist(1, ROOTS[:n], k), keys)
    if len(set(signers)) >= k:
        assert pin_keylist(raw, fleet_id="fleet", now=NOW).root_threshold == k
    else:
        with pytest.raises(ManifestError, match="required"):
            pin_keylist(raw, fleet_id="fleet", now=NOW)


def test_a_revoked_key_signs_nothing_even_within_its_expiry() -> None:
    stolen = keyid(public_bytes(RELEASE))
    revoking = keylist(2, ROOTS, 2)
    revoking.revoked_keyids.append(stolen)
    trust = update_keylist(pinned(), signed(revoking, ROOTS[:2]), now=NOW)
    assert trust.revoked == {stolen}
    assert stolen in trust.release  # still named (its expiry has not come) ...
    assert trust.release_keys(NOW) == {}  # ... but it counts for nothing
    assert stolen in pinned().release_keys(NOW)


def test_revocations_are_bounded_and_must_be_key_ids() -> None:
    too_many = keylist(1, ROOTS, 1)
    too_many.revoked_keyids.extend(f"{i:016x}" for i in range(65))
    with pytest.raises(ManifestError, match="revokes 65 keys"):
        pin_keylist(signed(too_many, ROOTS), fleet_id="fleet", now=NOW)
    garbage = keylist(1, ROOTS, 1)
    garbage.revoked_keyids.append("x" * 1000)
    with pytest.raises(ManifestError, match="malformed key id"):
        pin_keylist(signed(garbage, ROOTS), fleet_id="fleet", now=NOW)
