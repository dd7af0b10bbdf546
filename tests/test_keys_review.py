"""Issue 21's key lifecycle attacked by a careless operator and a failing machine, without
processes (the key files in tmp_path): every key list the server publishes must be one the
devices adopt, whatever the operator hands it, and two writers of the key list at once must not
publish two lists of one version."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from agent.errors import ManifestError
from agent.updates.trust import MAX_KEYS, TrustedKeys, pin_keylist, update_keylist
from fleet_server.admin_cli import main
from fleet_server.errors import DataDirError
from fleet_server.signing.keys import KeyStore
from tests.harness import fill_disk, run_cli, small_disk


def device_pinned(store: KeyStore) -> TrustedKeys:
    """A device that pinned the store's current key list."""
    return pin_keylist(store.keylist_bytes(), fleet_id="fleet", now=time.time())


def adopted_version(device: TrustedKeys, store: KeyStore) -> int:
    """The key list version such a device holds after it is sent the store's current list."""
    return update_keylist(device, store.keylist_bytes(), now=time.time()).version


def test_one_root_key_given_twice_does_not_publish_a_list_the_devices_refuse(
    tmp_path: Path,
) -> None:
    # A 2-of-3 fleet; the operator's root key folder holds one key and a backup copy of it.
    roots = tmp_path / "roots"
    store = KeyStore.create(
        tmp_path / "keys", "fleet", root_keys=3, root_threshold=2, root_key_dir=roots
    )
    device = device_pinned(store)
    handed = tmp_path / "handed"
    handed.mkdir()
    first = sorted(roots.glob("root-*.key"))[0]
    shutil.copy(first, handed / first.name)
    shutil.copy(first, handed / f"{first.stem}-backup.key")
    files = sorted(handed.glob("root-*.key"))
    with pytest.raises(DataDirError, match="1 of the fleet's root keys at hand; 2 must"):
        store.rotate_release(root_key_files=files)
    with pytest.raises(DataDirError, match="1 of the fleet's root keys at hand; 2 must"):
        store.revoke_release([store.keylist().release_keys[0].keyid], root_key_files=files)
    # Nothing was published: the server still signs what the devices trust.
    assert store.keylist().version == 1
    assert adopted_version(device, store) == 1


def test_rotations_within_an_overlap_never_publish_a_list_the_devices_refuse(
    tmp_path: Path,
) -> None:
    # A careless operator (or a script) rotates again and again within the 7-day overlap: each
    # rotation keeps every replaced key, and a device refuses a list of more than MAX_KEYS.
    store = KeyStore.create(tmp_path / "keys", "fleet")
    device = device_pinned(store)
    refused = 0
    for _ in range(MAX_KEYS + 2):
        try:
            published = store.rotate_release()
        except DataDirError as exc:
            assert "--overlap-days 0" in str(exc)
            refused += 1
            continue
        try:
            device = update_keylist(device, store.keylist_bytes(), now=time.time())
        except ManifestError as exc:
            pytest.fail(f"key list version {published.version} was published; devices: {exc}")
        assert device.version == published.version
    assert refused, "more release keys than a device takes were never refused"
    # With no overlap the operator gets on.
    assert adopted_version(device, store) == store.keylist().version
    published = store.rotate_release(overlap_s=0)
    assert adopted_version(device, store) == published.version


def test_two_rotations_at_once_publish_two_versions_not_one_twice(tmp_path: Path) -> None:
    # Two shells run 'keys rotate' at once (or a rotation meets the server's renewal): each
    # must publish its own version, so that no device keeps a list of a version the server
    # replaced with another of the same number.
    store = KeyStore.create(tmp_path / "keys", "fleet")
    directory = store.directory
    writers = 6
    barrier = threading.Barrier(writers)
    versions: list[int] = []
    errors: list[BaseException] = []

    def rotate() -> None:
        barrier.wait()
        try:
            versions.append(KeyStore(directory).rotate_release(overlap_s=3600).version)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(versions) == list(range(2, 2 + writers))
    final = KeyStore(directory).keylist()
    assert final.version == 1 + writers
    # The server signs with the last rotation's key, and only one release key file is left
    # outside keys/retired.
    assert [p.name for p in directory.glob("release-*.key")] == [
        f"release-{final.release_keys[0].keyid}.key"
    ]


@pytest.mark.parametrize("floor", ["-1", str(2**64)])
def test_keys_recover_refuses_a_floor_out_of_range_in_one_line(
    tmp_path: Path, floor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A typo in --floor was a traceback (protobuf's "Value out of range"), and a floor at the
    # top of the range would leave no release counter above it.
    store = KeyStore.create(tmp_path / "keys", "fleet")
    (key,) = store.keylist().release_keys
    code = main(
        [
            "--data-dir", str(tmp_path), "--server", "127.0.0.1:1", "keys", "recover",
            "--revoke", key.keyid, "--model", "m=1.0.0", "--floor", floor,
        ]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"--floor {floor} is out of range" in err
    assert len(err.strip().splitlines()) == 1
    assert store.keylist().version == 1


@pytest.mark.slow
def test_a_rotation_on_a_full_disk_says_so_in_one_line_and_leaves_the_keys_as_they_were(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "8m") as disk:
        data = disk / "server"
        roots = tmp_path / "roots"
        run_cli("edgefleet-server", "init", "--data-dir", str(data), "--root-key-dir", str(roots))
        keys = data / "keys"
        before = sorted(p.name for p in keys.iterdir())
        listed = (keys / "keylist.bin").read_bytes()
        filler = fill_disk(disk)
        out = run_cli(
            "edgefleet", "--data-dir", str(data), "keys", "rotate", "--root-key-dir", str(roots),
            check=False,
        )  # fmt: skip
        assert out.returncode == 1, out.stdout + out.stderr
        assert "No space left on device" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        # Nothing half-written: the same files (no empty release key, no keylist.tmp), the
        # same key list; and with room again the rotation goes through.
        assert sorted(p.name for p in keys.iterdir() if p.name != "keylist.lock") == before
        assert (keys / "keylist.bin").read_bytes() == listed
        filler.unlink()
        done = run_cli(
            "edgefleet", "--data-dir", str(data), "keys", "rotate", "--root-key-dir", str(roots)
        )
        assert "published key list version 2" in done.stdout
