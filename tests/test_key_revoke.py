"""Revoking a stolen release key in the key list (issue 21 item 4, the server side), without
processes: the key files in tmp_path. The end-to-end story with real agents is
tests/test_key_recovery.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.updates.trust import pin_keylist
from fleet_server.errors import DataDirError
from fleet_server.signing.keys import KeyStore
from protos import manifest_pb2


def test_a_revocation_drops_the_key_adds_a_fresh_one_and_retires_the_private_file(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    (stolen,) = store.keylist().release_keys
    keylist = store.revoke_release([stolen.keyid])
    assert keylist.version == 2
    assert list(keylist.revoked_keyids) == [stolen.keyid]
    assert [k.keyid for k in keylist.release_keys] != [stolen.keyid]
    assert len(keylist.release_keys) == 1
    assert not (store.directory / f"release-{stolen.keyid}.key").exists()
    assert (store.retired_dir / f"release-{stolen.keyid}.key").exists()
    trust = pin_keylist(store.keylist_bytes(), fleet_id="fleet", now=time.time())
    assert stolen.keyid in trust.revoked
    # What signs now is the fresh key.
    signed = store.manifest_signer().sign(manifest_pb2.Manifest(model_name="m"))
    assert [s.keyid for s in signed.signatures] == [keylist.release_keys[0].keyid]


def test_every_later_key_list_carries_the_revoked_ids(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    (stolen,) = store.keylist().release_keys
    store.revoke_release([stolen.keyid])
    assert stolen.keyid in store.rotate_release(overlap_s=60).revoked_keyids
    assert stolen.keyid in store.renew_keylist().revoked_keyids
    public = store.keylist().release_keys[0].public_key
    assert stolen.keyid in store.publish_release_key(public, overlap_s=0).revoked_keyids


def test_revoking_again_publishes_nothing_and_an_unknown_id_is_refused(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    (stolen,) = store.keylist().release_keys
    store.revoke_release([stolen.keyid])
    assert store.revoke_release([stolen.keyid]).version == 2
    with pytest.raises(DataDirError, match="not in key list version 2"):
        store.revoke_release(["ab" * 8])


def test_a_revocation_needs_the_root_threshold(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    store = KeyStore.create(
        tmp_path / "keys", "fleet", root_keys=3, root_threshold=2, root_key_dir=roots
    )
    (stolen,) = store.keylist().release_keys
    one = sorted(roots.glob("root-*.key"))[:1]
    with pytest.raises(DataDirError, match="1 of the fleet's root keys at hand; 2 must"):
        store.revoke_release([stolen.keyid], root_key_files=one)
    assert store.keylist().version == 1
    two = sorted(roots.glob("root-*.key"))[:2]
    assert store.revoke_release([stolen.keyid], root_key_files=two).version == 2
