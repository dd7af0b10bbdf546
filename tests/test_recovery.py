"""Recovery from a stolen release key (TUF's fast-forward attack), the pure rules: a root-signed
rollback undoes a release floor only when every key that set it is revoked."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ManifestError
from agent.updates.trust import TrustedKeys, pin_keylist
from agent.updates.verify import InstalledModel, VerifiedRelease, verify_release
from fleet_server.signing.keys import ManifestSigner, public_bytes, sign_envelope
from protos import manifest_pb2
from protos.envelope import KEYLIST_PAYLOAD_TYPE, keyid

NOW = 1_790_000_000.0
ROOTS = [Ed25519PrivateKey.generate() for _ in range(2)]
STOLEN = Ed25519PrivateKey.generate()
GOOD = Ed25519PrivateKey.generate()
SHA = "ab" * 32


def kid(key: Ed25519PrivateKey) -> str:
    return keyid(public_bytes(key))


def trust(version: int = 2, revoked: tuple[str, ...] = (kid(STOLEN),)) -> TrustedKeys:
    keylist = manifest_pb2.KeyList(
        version=version,
        expires_unix=int(NOW) + 3600,
        fleet_id="fleet",
        root_keys=[manifest_pb2.PublicKey(keyid=kid(k), public_key=public_bytes(k)) for k in ROOTS],
        root_threshold=2,
        release_keys=[
            manifest_pb2.PublicKey(keyid=kid(k), public_key=public_bytes(k)) for k in (STOLEN, GOOD)
        ],
        release_threshold=1,
        revoked_keyids=list(revoked),
    )
    envelope = sign_envelope(KEYLIST_PAYLOAD_TYPE, keylist.SerializeToString(), ROOTS)
    return pin_keylist(envelope.SerializeToString(), fleet_id="fleet", now=NOW)


def recovery(
    *, counter: int = 5, rollback_from: int = 6, keylist_version: int = 2
) -> manifest_pb2.Manifest:
    return manifest_pb2.Manifest(
        model_name="mobilenet",
        version="1.5.0",
        release_counter=counter,
        variant="int8",
        sha256=SHA,
        size=1000,
        artifact_id=SHA,
        created_unix=int(NOW) - 10,
        expires_unix=int(NOW) + 3600,
        fleet_id="fleet",
        explicit_rollback=True,
        rollback_from=rollback_from,
        recovery_keylist_version=keylist_version,
    )


def check(
    m: manifest_pb2.Manifest,
    floor_keyids: tuple[str, ...],
    *,
    signers: list[Ed25519PrivateKey] = ROOTS,
    keys: TrustedKeys | None = None,
    floor: int = 458,
) -> VerifiedRelease:
    installed = {"mobilenet": InstalledModel(floor, "cd" * 32, floor_keyids)}
    return verify_release(
        ManifestSigner(signers).sign(m).SerializeToString(),
        trust=keys or trust(),
        fleet_id="fleet",
        now=NOW,
        installed=installed,
        max_artifact_bytes=10_000,
    )


def test_a_floor_set_by_a_revoked_key_is_undone_by_the_root_keys() -> None:
    verified = check(recovery(), (kid(STOLEN),))
    assert verified.recovery
    assert verified.signers == tuple(sorted(kid(k) for k in ROOTS))
    assert verified.manifest.version == "1.5.0"


def test_without_the_recovery_field_it_is_a_replayed_rollback_as_before() -> None:
    with pytest.raises(ManifestError, match="a replayed rollback"):
        check(recovery(keylist_version=0), (kid(STOLEN),))


def test_a_recovery_below_the_root_threshold_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"signed by the root keys \(1 of 2"):
        check(recovery(), (kid(STOLEN),), signers=ROOTS[:1])
    # The stolen key cannot sign one either, nor can the good release key.
    with pytest.raises(ManifestError, match=r"\(0 of 2"):
        check(recovery(), (kid(STOLEN),), signers=[STOLEN, GOOD])


def test_a_floor_with_a_key_that_is_not_revoked_stays() -> None:
    with pytest.raises(ManifestError, match=f"does not revoke \\({kid(GOOD)}"):
        check(recovery(), (kid(STOLEN), kid(GOOD)))
    with pytest.raises(ManifestError, match="does not revoke"):
        check(recovery(), tuple(sorted(kid(k) for k in ROOTS)))


def test_a_floor_of_unknown_origin_is_refused_with_what_to_do() -> None:
    with pytest.raises(ManifestError, match=r"signers are unknown \(journal from an older agent"):
        check(recovery(), ())


def test_a_device_that_has_not_adopted_the_revoking_key_list_waits_for_it() -> None:
    with pytest.raises(ManifestError, match="needs key list version 3; this device has version 2"):
        check(recovery(keylist_version=3), (kid(STOLEN),))


def test_the_stolen_key_signs_no_release_once_revoked() -> None:
    release = recovery(counter=459, rollback_from=0, keylist_version=0)
    release.explicit_rollback = False
    with pytest.raises(ManifestError, match=r"\(0 of 1 required\)"):
        check(release, (kid(STOLEN),), signers=[STOLEN])
    # A recovery field on a release-signed manifest is just an ordinary manifest's field.
    release.recovery_keylist_version = 2
    verified = check(release, (kid(STOLEN),), signers=[GOOD])
    assert not verified.recovery
    assert verified.signers == (kid(GOOD),)


KEYS = {"stolen": kid(STOLEN), "good": kid(GOOD), "root": kid(ROOTS[0])}


@settings(max_examples=80, deadline=None)
@given(
    floor_keys=st.sets(st.sampled_from(sorted(KEYS))),
    revoked=st.sets(st.sampled_from(["stolen", "good"])),
    device_version=st.integers(min_value=1, max_value=4),
    wanted=st.integers(min_value=0, max_value=4),
    floor=st.integers(min_value=0, max_value=500),
    rollback_from=st.integers(min_value=0, max_value=500),
    roots=st.integers(min_value=0, max_value=2),
)
def test_a_rollback_above_rollback_from_passes_exactly_as_a_recovery_from_revoked_keys(
    *,
    floor_keys: set[str],
    revoked: set[str],
    device_version: int,
    wanted: int,
    floor: int,
    rollback_from: int,
    roots: int,
) -> None:
    keys = trust(device_version, tuple(KEYS[r] for r in sorted(revoked)))
    m = recovery(counter=min(rollback_from, 5), rollback_from=rollback_from, keylist_version=wanted)
    ids = tuple(sorted(KEYS[k] for k in floor_keys))
    recovers = (
        bool(floor_keys) and floor_keys <= revoked and wanted > 0 and device_version >= wanted
    )
    accepted = roots == 2 and (floor <= rollback_from or recovers)
    if not accepted:
        with pytest.raises(ManifestError):
            check(m, ids, signers=ROOTS[:roots], keys=keys, floor=floor)
        return
    verified = check(m, ids, signers=ROOTS[:roots], keys=keys, floor=floor)
    assert verified.recovery == (floor > rollback_from)
