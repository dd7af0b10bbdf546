"""Release-key rotation with an overlap, and the server re-signing and renewing the manifests in
use (issue 21 items 1 and 3), without processes: the key files and a SQLite database in
tmp_path. The end-to-end story with real agents is tests/test_key_rotation.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import ManifestError
from agent.updates.trust import MAX_SIGNATURES, pin_keylist, update_keylist
from agent.updates.verify import InstalledModel, verify_manifest
from fleet_server.audit.store import AuditLog
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import DataDirError
from fleet_server.renewal.maintainer import KeyMaintainer, in_use, pending
from fleet_server.rollouts.store import RolloutStore
from fleet_server.signing.keys import KeyStore, find_root_keys, sign_envelope
from fleet_server.signing.resign import Action, judge, merged
from fleet_server.storage.db import Database
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE

DAY = 86400
SHA = "ab" * 32


def a_manifest(name: str, now: float, lifetime_s: float = 365 * DAY) -> manifest_pb2.Manifest:
    return manifest_pb2.Manifest(
        model_name=name,
        version="1.0.0",
        release_counter=1,
        variant="cpu",
        sha256=SHA,
        size=100,
        artifact_id=SHA,
        created_unix=int(now),
        expires_unix=int(now + lifetime_s),
        fleet_id="fleet",
    )


def device_accepts(raw: bytes, keylist_bytes: bytes, now: float) -> bool:
    """Whether a device that pinned ``keylist_bytes`` installs the manifest (or keeps it)."""
    trust = pin_keylist(keylist_bytes, fleet_id="fleet", now=now)
    try:
        verify_manifest(
            raw,
            trust=trust,
            fleet_id="fleet",
            now=now,
            installed={"m": InstalledModel(1, SHA)},
            max_artifact_bytes=1000,
        )
    except ManifestError:
        return False
    return True


def test_a_rotation_keeps_the_replaced_key_for_the_overlap_and_signs_only_with_the_new_one(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    now = time.time()
    old_signed = store.manifest_signer().sign(a_manifest("m", now)).SerializeToString()
    (old,) = store.keylist().release_keys
    pinned = pin_keylist(store.keylist_bytes(), fleet_id="fleet", now=now)

    keylist = store.rotate_release(overlap_s=3600)
    new, kept = keylist.release_keys
    assert keylist.version == 2 and new.keyid != old.keyid and not new.expires_unix
    assert kept.keyid == old.keyid and abs(kept.expires_unix - (now + 3600)) < 5
    # Nothing signs with the old key any more: its file is retired at once.
    assert not (tmp_path / "keys" / f"release-{old.keyid}.key").exists()
    assert (store.retired_dir / f"release-{old.keyid}.key").exists()
    signed = store.manifest_signer().sign(a_manifest("m", now))
    assert [s.keyid for s in signed.signatures] == [new.keyid]
    # A device adopts the new list and still accepts what the old key signed, until the
    # overlap ends.
    update_keylist(pinned, store.keylist_bytes(), now=now)
    assert device_accepts(old_signed, store.keylist_bytes(), now)
    assert not device_accepts(old_signed, store.keylist_bytes(), now + 3600 + 301)


def test_overlap_zero_drops_the_replaced_key_at_once(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    (old,) = store.keylist().release_keys
    keylist = store.rotate_release(overlap_s=0)
    assert [k.keyid for k in keylist.release_keys] != [old.keyid]
    assert len(keylist.release_keys) == 1
    # Retired without an overlap: the file stays in retired/ as before.
    assert store.purge_retired(time.time() + 365 * DAY) == []
    assert (store.retired_dir / f"release-{old.keyid}.key").exists()


def test_the_retired_file_goes_when_the_overlap_ends_and_the_next_list_leaves_the_key_out(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    (old,) = store.keylist().release_keys
    store.rotate_release(overlap_s=1)
    retired = store.retired_dir / f"release-{old.keyid}.key"
    assert store.purge_retired(time.time()) == [] and retired.exists()
    time.sleep(1.1)
    assert store.purge_retired(time.time()) == [retired] and not retired.exists()
    # A rotation after the overlap leaves the expired key out.
    again = store.rotate_release(overlap_s=60)
    assert old.keyid not in {k.keyid for k in again.release_keys}
    assert len(again.release_keys) == 2  # the new one and the one it replaced


def test_a_renewed_key_list_keeps_the_keys_drops_the_expired_ones_and_needs_the_roots(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet", root_key_dir=tmp_path / "roots")
    with pytest.raises(DataDirError, match="root keys at hand"):
        store.renew_keylist()
    roots = find_root_keys(tmp_path / "roots")
    rotated = store.rotate_release(root_key_files=roots, overlap_s=1)
    time.sleep(1.1)
    renewed = store.renew_keylist(root_key_files=roots, lifetime_s=100 * DAY)
    assert renewed.version == rotated.version + 1
    assert [k.keyid for k in renewed.release_keys] == [rotated.release_keys[0].keyid]
    assert renewed.expires_unix > time.time() + 99 * DAY


def test_merged_keeps_the_old_signatures_and_caps_the_count() -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(MAX_SIGNATURES + 1)]
    payload = a_manifest("m", time.time()).SerializeToString()
    old = sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys[:MAX_SIGNATURES])
    new = sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys[MAX_SIGNATURES:])
    both = merged(old, new, manifest_pb2.KeyList())
    assert len(both.signatures) == MAX_SIGNATURES
    assert both.signatures[-1] == new.signatures[0]
    assert both.signatures[0] == old.signatures[1]  # the oldest went
    with pytest.raises(ValueError, match="another payload"):
        merged(old, sign_envelope(MANIFEST_PAYLOAD_TYPE, b"x", keys[:1]), manifest_pb2.KeyList())


def test_judge_reissues_what_expires_soon_and_signs_what_only_retiring_keys_signed(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    now = time.time()
    envelope = store.manifest_signer().sign(a_manifest("m", now))
    keylist = store.keylist()
    assert judge(envelope, keylist, now=now, renew_ahead_s=30 * DAY).action == Action.KEEP
    soon = store.manifest_signer().sign(a_manifest("m", now, lifetime_s=10 * DAY))
    verdict = judge(soon, keylist, now=now, renew_ahead_s=30 * DAY)
    assert verdict.action == Action.REISSUE and "within 30" in verdict.reason
    store.rotate_release()
    verdict = judge(envelope, store.keylist(), now=now, renew_ahead_s=30 * DAY)
    assert verdict.action == Action.ADD_SIGNATURES and "0 of the release keys" in verdict.reason
    unsigned = manifest_pb2.Envelope(payload_type=MANIFEST_PAYLOAD_TYPE, payload=b"")
    assert judge(unsigned, store.keylist(), now=now, renew_ahead_s=0).action == Action.KEEP
    # A manifest a revoked (stolen) key signed is neither signed again nor renewed: a fresh
    # signature would vouch for its release and keep devices on its floor.
    revoking = manifest_pb2.KeyList()
    revoking.CopyFrom(store.keylist())
    revoking.revoked_keyids.extend(s.keyid for s in soon.signatures)
    for stolen in (envelope, soon):
        verdict = judge(stolen, revoking, now=now, renew_ahead_s=30 * DAY)
        assert verdict.action == Action.KEEP and "revoked" in verdict.reason


def _fleet(
    tmp_path: Path, lifetime_s: float = 365 * DAY
) -> tuple[KeyStore, CatalogStore, Database]:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    store = KeyStore.create(tmp_path / "keys", "fleet")
    catalog = CatalogStore(db)
    now = time.time()
    for name in ("a", "b", "c"):
        envelope = store.manifest_signer().sign(a_manifest(name, now, lifetime_s))
        catalog.add_model(
            ModelRow(
                name, "1.0.0", "cpu", 1, SHA, 100, False, envelope.SerializeToString(), int(now)
            )
        )
    for name in ("a", "b"):
        catalog.deploy(name, "1.0.0")
    return store, catalog, db


def _maintainer(
    store: KeyStore, catalog: CatalogStore, db: Database, **kwargs: Any
) -> KeyMaintainer:
    return KeyMaintainer(
        store,
        catalog,
        RolloutStore(db, catalog),
        AuditLog(db),
        root_keys=lambda: find_root_keys(store.directory),
        manifest_lifetime_s=kwargs.pop("manifest_lifetime_s", 365 * DAY),
        **kwargs,
    )


def test_after_a_rotation_a_pass_signs_the_deployed_manifests_with_the_new_key(
    tmp_path: Path,
) -> None:
    store, catalog, db = _fleet(tmp_path)
    before = {r.model_name: r.envelope for r in catalog.list_models()}
    keylist = store.rotate_release(overlap_s=60)
    maintainer = _maintainer(store, catalog, db)
    done = maintainer.run_once()
    # Deployed: a and b. c is in no deployment or rollout: left alone.
    assert done.signed == ["a 1.0.0 (cpu)", "b 1.0.0 (cpu)"] and not done.reissued
    after = {r.model_name: r.envelope for r in catalog.list_models()}
    assert after["c"] == before["c"]
    later = time.time() + 3600  # the overlap is over: only the new key counts
    for name in ("a", "b"):
        envelope = manifest_pb2.Envelope.FromString(after[name])
        assert envelope.payload == manifest_pb2.Envelope.FromString(before[name]).payload
        assert [s.keyid for s in envelope.signatures][-1] == keylist.release_keys[0].keyid
        assert device_accepts(after[name], store.keylist_bytes(), later)
    assert not device_accepts(after["c"], store.keylist_bytes(), later)
    assert maintainer.run_once().signed == []  # nothing left to do
    actions = [e.action for e in AuditLog(db).entries(10, 0)]
    assert actions.count("ResignManifest") == 2


def test_a_pass_reissues_manifests_that_expire_within_the_renewal_period(tmp_path: Path) -> None:
    store, catalog, db = _fleet(tmp_path, lifetime_s=20 * DAY)
    maintainer = _maintainer(store, catalog, db, manifest_lifetime_s=60 * DAY)
    done = maintainer.run_once()
    assert done.reissued == ["a 1.0.0 (cpu)", "b 1.0.0 (cpu)"]
    for row in in_use(catalog, RolloutStore(db, catalog)):
        manifest = manifest_pb2.Manifest.FromString(
            manifest_pb2.Envelope.FromString(row.envelope).payload
        )
        assert manifest.expires_unix > time.time() + 59 * DAY and manifest.sha256 == SHA
        assert device_accepts(row.envelope, store.keylist_bytes(), time.time())
    assert pending(in_use(catalog, RolloutStore(db, catalog)), store.keylist(), now=time.time(),
                   renew_ahead_s=30 * DAY) == []  # fmt: skip


def test_without_a_release_key_online_a_pass_lists_what_waits_and_changes_nothing(
    tmp_path: Path,
) -> None:
    store, catalog, db = _fleet(tmp_path)
    before = [r.envelope for r in catalog.list_models()]
    (new,) = store.rotate_release(overlap_s=60).release_keys[:1]
    (store.directory / f"release-{new.keyid}.key").rename(tmp_path / "offline.key")
    done = _maintainer(store, catalog, db).run_once()
    assert [p.name for p in done.waiting] == ["a 1.0.0 (cpu)", "b 1.0.0 (cpu)"]
    assert [r.envelope for r in catalog.list_models()] == before


def test_a_renewal_period_as_long_as_a_lifetime_is_refused(tmp_path: Path) -> None:
    store, catalog, db = _fleet(tmp_path)
    with pytest.raises(DataDirError, match="--renew-ahead-days 30 must be shorter than "
                       "--manifest-lifetime-days 2"):  # fmt: skip
        _maintainer(store, catalog, db, manifest_lifetime_s=2 * DAY)


def test_a_pass_renews_a_key_list_that_expires_soon_when_the_root_keys_are_here(
    tmp_path: Path,
) -> None:
    store, catalog, db = _fleet(tmp_path)
    roots = find_root_keys(store.directory)
    store.renew_keylist(root_key_files=roots, lifetime_s=10 * DAY)
    done = _maintainer(store, catalog, db).run_once()
    assert done.keylist_renewed == 3 and store.keylist().expires_unix > time.time() + 300 * DAY


def test_the_commands_that_write_keys_give_the_umask_back(tmp_path: Path) -> None:
    """`keys rotate` and `edgefleet-server` run with umask 077; called in a process that goes
    on (a test's, a tool's) they leave its umask as it was (a leaked 077 made every folder the
    process created later 0700)."""
    import contextlib
    import io
    import os

    from fleet_server.admin_cli import main as admin_main
    from fleet_server.cli import main as server_main

    before = os.umask(0o022)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert (
                server_main(["init", "--data-dir", str(tmp_path / "d"), "--keep-root-online"]) == 0
            )
            assert admin_main(["--data-dir", str(tmp_path / "d"), "keys", "rotate"]) == 0
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def test_tokens_never_start_with_a_dash() -> None:
    """An admin or enrollment token is given as `--token TOKEN`: one starting with "-" (1 in
    64 of token_urlsafe's) was read by argparse as an option (a once-in-CI failure)."""
    from fleet_server.datadir import new_token

    tokens = [new_token(24) for _ in range(3000)]  # about 47 would start with "-" otherwise
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(t) == 32 for t in tokens)


def test_a_pass_retires_the_file_of_a_replaced_key_a_killed_rotation_left_behind(
    tmp_path: Path,
) -> None:
    store, catalog, db = _fleet(tmp_path)
    (old,) = [k.keyid for k in store.keylist().release_keys]
    store.rotate_release(overlap_s=60)
    # A kill between publishing the list and moving the file: it is still beside the new key.
    moved = store.retired_dir / f"release-{old}.key"
    moved.replace(store.directory / moved.name)
    _maintainer(store, catalog, db).run_once()
    assert moved.exists() and not (store.directory / moved.name).exists()
    (new,) = [k.keyid for k in store.keylist().release_keys if not k.expires_unix]
    assert (store.directory / f"release-{new}.key").exists()  # the signing key stays


def test_a_pass_never_signs_a_manifest_changed_in_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The server's own signatures must not vouch for what someone wrote into its database:
    # a deployed manifest whose payload was edited is left alone, before and after a rotation
    # and when it is due for a re-issue.
    store, catalog, db = _fleet(tmp_path)
    (row,) = catalog.get_variants("a", "1.0.0")
    envelope = manifest_pb2.Envelope.FromString(row.envelope)
    manifest = manifest_pb2.Manifest.FromString(envelope.payload)
    manifest.size += 1
    manifest.expires_unix = int(time.time() + DAY)  # due for a re-issue too
    envelope.payload = manifest.SerializeToString()
    catalog.set_envelope("a", "1.0.0", row.variant, envelope.SerializeToString())
    store.rotate_release(overlap_s=60)
    done = _maintainer(store, catalog, db).run_once()
    assert "a 1.0.0 (cpu)" not in done.signed + done.reissued
    assert catalog.get_variants("a", "1.0.0")[0].envelope == envelope.SerializeToString()
    assert "a 1.0.0 (cpu) in use is left as it is: no signature verifies" in caplog.text
