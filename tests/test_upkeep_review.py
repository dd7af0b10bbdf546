"""Review of the release upkeep added after 01e775c: offline signatures attached by an admin
token holder, the expiry hook run by the key maintainer, and the maintainer tidying the keys
folder. Each test is a finding: a hostile peer, a careless operator or a failing machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.updates.trust import MAX_ENVELOPE_BYTES
from fleet_server.audit.store import AuditLog
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.renewal.maintainer import KeyMaintainer
from fleet_server.renewal.status import ExpiryWatch
from fleet_server.rollouts.store import RolloutStore
from fleet_server.signing.expiry import KeyStatus, assess
from fleet_server.signing.keys import KeyStore, find_root_keys
from fleet_server.storage.db import Database
from protos import manifest_pb2
from tests.harness import DATA, Server, run_cli, wait_for

DAY = 86400
SHA = "ab" * 32


def stored_envelope(server: Server) -> manifest_pb2.Envelope:
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        (raw,) = db.execute(
            "SELECT envelope FROM models WHERE model_name='digits' AND version='1.0.0'"
        ).fetchone()
    return manifest_pb2.Envelope.FromString(raw)


def signatures(envelope: manifest_pb2.Envelope) -> set[tuple[str, bytes]]:
    return {(s.keyid, s.sig) for s in envelope.signatures}


@contextlib.contextmanager
def killed_at_end(pid_file: Path) -> Iterator[None]:
    """Kill the process whose id a hook wrote to ``pid_file``, if it is still there."""
    try:
        yield
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_token_holder_without_a_key_cannot_rewrite_a_deployed_manifests_signatures(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None)
    digits = str(DATA / "digits_local_float.tflite")
    server.admin("models", "push", digits, "--name", "digits", "--version", "1.0.0", "--deploy")
    server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir),
                 "--overlap-days", "7")  # fmt: skip
    wait_for("the new key's signature", lambda: len(stored_envelope(server).signatures) == 2)
    before = stored_envelope(server)
    (old_id, _), (_, new_sig) = [(s.keyid, s.sig) for s in before.signatures]
    # The key id of a signature is a hint: the new key's valid signature under the old key's id,
    # then under an id long enough to pass the envelope size devices accept.
    for n, keyid in enumerate((old_id, "f" * (MAX_ENVELOPE_BYTES - 1000))):
        forged = manifest_pb2.Envelope(payload_type=before.payload_type, payload=before.payload)
        forged.signatures.add(keyid=keyid, sig=new_sig)
        path = tmp_path / f"forged-{n}.signed"
        path.write_bytes(forged.SerializeToString())
        server.admin("manifest", "attach", str(path), check=False)
        after = stored_envelope(server)
        # The old key's signature stays (devices on the previous list verify it), and devices
        # still take the envelope.
        assert signatures(before) <= signatures(after), after.signatures
        assert after.ByteSize() <= MAX_ENVELOPE_BYTES // 2


@pytest.mark.slow
def test_a_hook_that_leaves_a_process_holding_its_output_is_done_when_it_exits(
    tmp_path: Path,
) -> None:
    received, daemon = tmp_path / "received.jsonl", tmp_path / "daemon.pid"
    program = tmp_path / "hook.sh"
    program.write_text(
        f'#!/bin/sh\ncat >> "{received}"\necho >> "{received}"\n'
        f'sleep 600 &\necho $! > "{daemon}"\nexit 0\n'
    )
    program.chmod(0o700)
    now = time.time()
    keylist = manifest_pb2.KeyList(version=4, expires_unix=int(now + 12 * DAY))

    def status(t: float) -> KeyStatus:
        return assess(keylist, [], [], root_key_folders=(), now=t)

    watch = ExpiryWatch(status, "fleet-a", program)
    with killed_at_end(daemon):
        assert len(watch.check(now)) == 1
        # Delivered (it exited 0): not handed again the same day.
        assert watch.check(now + 600) == []
    assert len(received.read_text().splitlines()) == 1  # one event


@pytest.mark.slow
def test_a_hook_that_hangs_does_not_hold_up_re_signing_after_a_rotation(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    block, started = tmp_path / "block", tmp_path / "hook.pid"
    program = tmp_path / "hook.sh"
    # Fails (retried at every pass) until told to hang; then hangs until the server kills it.
    program.write_text(
        "#!/bin/sh\ncat > /dev/null\n"
        f'[ -e "{block}" ] || exit 1\necho $$ > "{started}"\nexec sleep 600\n'
    )
    program.chmod(0o700)
    server = server_factory(None, extra=("--expiry-hook", str(program)))
    digits = str(DATA / "digits_local_float.tflite")
    server.admin("models", "push", digits, "--name", "digits", "--version", "1.0.0", "--deploy")
    block.touch()
    with killed_at_end(started):
        # The root keys beside the data dir are told at each pass while the hook fails: the
        # pass after this rotation (or the deploy's) runs it, and it hangs.
        server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir),
                     "--overlap-days", "7")  # fmt: skip
        pid = int(
            wait_for("the hook to hang", lambda: started.read_text() if started.exists() else None)
        )
        server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir),
                     "--overlap-days", "7")  # fmt: skip
        keylist = manifest_pb2.KeyList.FromString(
            manifest_pb2.Envelope.FromString(
                (server.data_dir / "keys" / "keylist.bin").read_bytes()
            ).payload
        )
        (signing,) = [k.keyid for k in keylist.release_keys if not k.expires_unix]
        wait_for(
            "the new key's signature",
            lambda: signing in {s.keyid for s in stored_envelope(server).signatures},
            timeout=120,
        )
        assert alive(pid), "the manifest was re-signed only once the hook was killed"


SHM = Path("/dev/shm")  # noqa: S108 - a folder on another file system, made with mkdtemp


@pytest.mark.skipif(
    not SHM.is_dir() or SHM.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev,
    reason="needs /dev/shm on another file system than the temporary folder",
)
def test_a_keys_folder_that_cannot_take_a_leftover_key_does_not_stop_re_signing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    store = KeyStore.create(tmp_path / "keys", "fleet")
    catalog = CatalogStore(db)
    now = time.time()
    manifest = manifest_pb2.Manifest(
        model_name="m", version="1.0.0", release_counter=1, variant="cpu", sha256=SHA, size=1,
        artifact_id=SHA, created_unix=int(now), expires_unix=int(now + 365 * DAY),
        fleet_id="fleet",
    )  # fmt: skip
    envelope = store.manifest_signer().sign(manifest).SerializeToString()
    catalog.add_model(ModelRow("m", "1.0.0", "cpu", 1, SHA, 1, False, envelope, int(now)))
    catalog.deploy("m", "1.0.0")
    store.rotate_release(overlap_s=7 * DAY)
    # A leftover key file, and a keys/retired it cannot be moved to: on another file system
    # here (rename fails with EXDEV); as well a read-only keys folder or a full disk.
    leftover = store.directory / "release-0123456789abcdef.key"
    leftover.write_bytes(b"an old key")
    elsewhere = Path(tempfile.mkdtemp(dir=SHM))
    request.addfinalizer(lambda: shutil.rmtree(elsewhere))
    for path in store.retired_dir.iterdir():
        shutil.move(path, elsewhere / path.name)
    store.retired_dir.rmdir()
    store.retired_dir.symlink_to(elsewhere)
    maintainer = KeyMaintainer(
        store, catalog, RolloutStore(db, catalog), AuditLog(db),
        root_keys=lambda: find_root_keys(store.directory), manifest_lifetime_s=365 * DAY,
    )  # fmt: skip
    done = maintainer.run_once()
    assert done.signed == ["m 1.0.0 (cpu)"]
    assert leftover.exists()


@pytest.mark.slow
def test_a_re_issue_needs_a_key_that_signs_and_a_lifetime_the_server_would_give(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None)
    digits = str(DATA / "digits_local_float.tflite")
    server.admin("models", "push", digits, "--name", "digits", "--version", "1.0.0", "--deploy")
    server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir),
                 "--overlap-days", "7")  # fmt: skip
    wait_for("the new key's signature", lambda: len(stored_envelope(server).signatures) == 2)
    before = stored_envelope(server)
    old_id, new_id = (s.keyid for s in before.signatures)
    keys = server.data_dir / "keys"
    replaced, current = keys / "retired" / f"release-{old_id}.key", keys / f"release-{new_id}.key"

    def attach(key: Path, lifetime_days: float) -> int:
        manifest = manifest_pb2.Manifest.FromString(before.payload)
        manifest.created_unix = int(time.time())
        manifest.expires_unix = int(time.time() + lifetime_days * DAY)
        path = tmp_path / f"{key.stem}-{lifetime_days:g}.manifest"
        path.write_bytes(manifest.SerializeToString())
        server.admin("manifest", "sign", str(path), "--key", str(key))
        return server.admin("manifest", "attach", str(path.with_suffix(".signed")),
                            check=False).returncode  # fmt: skip

    # (365.5 days: a re-issue made in the second of the push with the push's 365 would be the
    # very manifest stored, whose signatures merge instead.)
    # The careless operator signs with the key a rotation replaced: devices would refuse the
    # release once the overlap ends, and the current key's signature would be gone.
    assert attach(replaced, 365.5) == 1
    # Signed long ago for ten years (or by a hostile signer): beyond what the server issues.
    assert attach(current, 3650) == 1
    assert stored_envelope(server) == before
    assert attach(current, 365.5) == 0  # what 'manifest pending' would have written
    assert {s.keyid for s in stored_envelope(server).signatures} == {new_id}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user (chown)")
def test_a_hook_someone_else_could_swap_is_refused_at_start_and_not_run_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(program: Path) -> str:
        run = run_cli("edgefleet-server", "run", "--data-dir", str(tmp_path / "d"),
                      "--expiry-hook", str(program), check=False)  # fmt: skip
        assert run.returncode == 2, run.stderr
        return run.stderr

    shared = tmp_path / "shared"  # a folder anyone can write, without the sticky bit
    shared.mkdir()
    shared.chmod(0o777)
    program = shared / "hook.sh"
    program.write_text('#!/bin/sh\ntouch "$0.ran"\n')
    program.chmod(0o755)
    assert f"{shared} is writable by its group or others" in refused(program)
    shared.chmod(0o755)
    os.chown(program, 65534, 65534)  # another user's file: they can rewrite it
    assert "belongs to uid 65534" in refused(program)
    os.chown(program, os.geteuid(), os.getegid())
    link = tmp_path / "hook-link"
    link.symlink_to(program)

    now = time.time()
    keylist = manifest_pb2.KeyList(version=4, expires_unix=int(now + 12 * DAY))

    def status(t: float) -> KeyStatus:
        return assess(keylist, [], [], root_key_folders=(), now=t)

    watch = ExpiryWatch(status, "fleet-a", link)  # accepted at start, then swapped
    program.chmod(0o777)
    watch.check(now)
    assert not Path(f"{link}.ran").exists() and not Path(f"{program}.ran").exists()
    assert "writable by its group or others" in caplog.text
    program.chmod(0o755)
    watch.check(now + 600)
    assert Path(f"{link}.ran").exists()  # ran again once it is safe
