"""Recovery from a stolen release key on one device: the real updater, journal, engine and
models (issue 21 item 4). The artifacts are in the store already, so nothing is downloaded and
no process starts; reports are collected.

The scenario: an attacker with the release key signs mobilenet 9.9.358 at release 458 and the
device installs it. After the key list revokes that key, a new release (counter 6) is older
than 458 and a plain root-signed rollback is a replay; a root-signed recovery brings the device
back, and cannot be replayed once a legitimate release raised the floor again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.client import DeviceClient
from agent.identity import Identity
from agent.inference.engine import Engine, EngineOptions
from agent.updates.health import HealthPolicy
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ModelStore
from agent.updates.trust import TrustedKeys, pin_keylist
from agent.updates.updater import Updater
from fleet_server.signing.keys import ManifestSigner, public_bytes, sign_envelope
from protos import device_pb2, manifest_pb2
from protos.envelope import KEYLIST_PAYLOAD_TYPE, keyid
from tests.harness import model_variant

NOW = 1_790_000_000.0
DATA = Path(__file__).parent / "data"
ROOTS = [Ed25519PrivateKey.generate() for _ in range(2)]
STOLEN = Ed25519PrivateKey.generate()
NEW = Ed25519PrivateKey.generate()


def kid(key: Ed25519PrivateKey) -> str:
    return keyid(public_bytes(key))


def keys(version: int, release: list[Ed25519PrivateKey], revoked: list[str]) -> TrustedKeys:
    def public(k: Ed25519PrivateKey) -> manifest_pb2.PublicKey:
        return manifest_pb2.PublicKey(keyid=kid(k), public_key=public_bytes(k))

    keylist = manifest_pb2.KeyList(
        version=version,
        expires_unix=int(NOW) + 86400,
        fleet_id="fleet",
        root_keys=[public(k) for k in ROOTS],
        root_threshold=2,
        release_keys=[public(k) for k in release],
        release_threshold=1,
        revoked_keyids=revoked,
    )
    envelope = sign_envelope(KEYLIST_PAYLOAD_TYPE, keylist.SerializeToString(), ROOTS)
    return pin_keylist(envelope.SerializeToString(), fleet_id="fleet", now=NOW)


class Device:
    """One device's updater over a real store, with every model file already in it."""

    def __init__(self, root: Path) -> None:
        self.store = ModelStore(root)
        self.reports: list[device_pb2.StatusReport] = []
        self.client = DeviceClient("127.0.0.1:9", timeout_s=0.5)
        self.client.on_report = lambda r: not self.reports.append(r)  # type: ignore[func-returns-value]
        self.client.deliver_outbox = lambda: True  # collected; nothing is sent
        self.identity = Identity("d", "fleet", keys(1, [STOLEN], []), "", "", b"", b"", b"")
        self.engine = Engine(EngineOptions())
        self.lifecycle = Lifecycle(self.store, HealthPolicy(), boot="b")
        self.updater = Updater(
            lifecycle=self.lifecycle,
            engine=self.engine,
            client=self.client,
            identity=self.identity,
            clock=lambda: NOW,
            monotonic=lambda: 1000.0,
        )
        self.files: dict[str, bytes] = {}

    def release(self, version: str, counter: int, **fields: object) -> manifest_pb2.Manifest:
        data = model_variant((DATA / "digits_local_int8.tflite").read_bytes(), version)
        sha = hashlib.sha256(data).hexdigest()
        path = self.store.artifact_path("mobilenet", sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return manifest_pb2.Manifest(
            model_name="mobilenet",
            version=version,
            release_counter=counter,
            variant="int8",
            sha256=sha,
            size=len(data),
            artifact_id=sha,
            created_unix=int(NOW),
            expires_unix=int(NOW) + 3600,
            fleet_id="fleet",
            **fields,  # type: ignore[arg-type]
        )

    def offer(self, m: manifest_pb2.Manifest, *signers: Ed25519PrivateKey) -> str:
        """Apply ``m`` signed by ``signers``; the detail of a FAILED report, or ""."""
        before = len(self.reports)
        self.updater.apply([ManifestSigner(list(signers)).sign(m)])
        failed = [r.detail for r in self.reports[before:] if r.state == device_pb2.FAILED]
        return failed[0] if failed else ""

    def rotate(self, trust: TrustedKeys) -> None:
        self.identity = self.identity.with_trust(trust)
        self.updater.set_identity(self.identity)

    def floor(self) -> tuple[str, int, tuple[str, ...]]:
        entry = self.store.active()["mobilenet"]
        return entry.version, entry.release_counter, entry.floor_keyids

    def serving(self) -> str:
        model = self.engine.peek("mobilenet")
        assert model is not None
        return model.version


@pytest.fixture
def local_device(tmp_path: Path) -> Iterator[Device]:
    """(Not named ``device``: the process guard knows fixtures by name, and other files'
    ``device`` fixtures start servers.)"""
    device = Device(tmp_path)
    yield device
    device.client.close()


ROOT_IDS = tuple(sorted(kid(k) for k in ROOTS))


def stolen_and_rotated(device: Device) -> manifest_pb2.Manifest:
    """1.5.0 (release 5) serves; the attacker's 9.9.358 (458) replaces it; the key list
    revokes the stolen key and names a new one."""
    admins = device.release("1.5.0", 5)
    assert device.offer(admins, STOLEN) == ""  # the release key before it was stolen
    assert device.offer(device.release("9.9.358", 458), STOLEN) == ""
    assert device.floor() == ("9.9.358", 458, (kid(STOLEN),))
    device.rotate(keys(2, [STOLEN, NEW], [kid(STOLEN)]))
    return admins


def test_a_root_signed_recovery_undoes_a_stolen_keys_floor(local_device: Device) -> None:
    device = local_device
    admins = stolen_and_rotated(device)
    assert "older than installed release 458" in device.offer(device.release("1.6.0", 6), NEW)
    rollback = manifest_pb2.Manifest()
    rollback.CopyFrom(admins)
    rollback.explicit_rollback, rollback.rollback_from = True, 6
    assert "a replayed rollback" in device.offer(rollback, *ROOTS)  # issue 21's complaint
    recovery = manifest_pb2.Manifest()
    recovery.CopyFrom(rollback)
    recovery.recovery_keylist_version = 2
    assert "(1 of 2 required)" in device.offer(recovery, ROOTS[0])
    assert "(0 of 2 required)" in device.offer(recovery, STOLEN, NEW)
    assert device.offer(recovery, *ROOTS) == ""
    assert device.floor() == ("1.5.0", 6, ROOT_IDS)  # the attacker's 458 is gone
    assert device.serving() == "1.5.0"
    journal = device.store.journal()
    assert "mobilenet" not in journal.previous and "mobilenet" not in journal.health
    # New releases install again; the recovery cannot be replayed over them.
    assert device.offer(device.release("1.6.0", 7), NEW) == ""
    assert device.floor() == ("1.6.0", 7, (kid(NEW),))
    assert f"does not revoke ({kid(NEW)}" in device.offer(recovery, *ROOTS)
    assert device.serving() == "1.6.0"
    # The attacker's release and key are refused.
    assert "(0 of 1 required)" in device.offer(device.release("9.9.359", 459), STOLEN)


def test_a_recovery_reaches_a_device_that_had_rolled_the_stolen_release_back(
    local_device: Device,
) -> None:
    """Its health window rolled 9.9.358 back: 1.5.0 serves, under the floor 458. The recovery
    to 1.5.0 is what serves already, and only lowers the floor."""
    device = local_device
    admins = stolen_and_rotated(device)
    device.lifecycle.rolled_back("mobilenet")  # as its health window does
    assert device.floor() == ("1.5.0", 458, (kid(STOLEN),))
    recovery = manifest_pb2.Manifest()
    recovery.CopyFrom(admins)
    recovery.explicit_rollback, recovery.rollback_from = True, 6
    recovery.recovery_keylist_version = 2
    assert device.offer(recovery, *ROOTS) == ""
    assert device.floor() == ("1.5.0", 6, ROOT_IDS)
    assert device.offer(device.release("1.6.0", 7), NEW) == ""


def test_a_floor_from_an_older_agents_journal_is_refused_with_a_reason(
    local_device: Device,
) -> None:
    device = local_device
    admins = stolen_and_rotated(device)
    journal = device.store.root / "active.json"
    raw = json.loads(journal.read_text())
    del raw["models"]["mobilenet"]["floor_keyids"]
    journal.write_text(json.dumps(raw))
    recovery = manifest_pb2.Manifest()
    recovery.CopyFrom(admins)
    recovery.explicit_rollback, recovery.rollback_from = True, 6
    recovery.recovery_keylist_version = 2
    detail = device.offer(recovery, *ROOTS)
    assert "the floor's signers are unknown (journal from an older agent)" in detail
    assert device.floor()[:2] == ("9.9.358", 458)


def test_an_older_agents_journal_learns_the_floors_keys_from_the_next_check_in(
    local_device: Device,
) -> None:
    """Before the rotation, the server still sends the release that set the floor: the device
    learns who signed it, and the recovery works after the rotation."""
    device = local_device
    admins = device.release("1.5.0", 5)
    assert device.offer(admins, STOLEN) == ""
    attack = device.release("9.9.358", 458)
    assert device.offer(attack, STOLEN) == ""
    journal = device.store.root / "active.json"
    raw = json.loads(journal.read_text())
    del raw["models"]["mobilenet"]["floor_keyids"]
    journal.write_text(json.dumps(raw))
    assert device.floor()[2] == ()
    assert device.offer(attack, STOLEN) == ""  # the next check-in: what is active
    assert device.floor() == ("9.9.358", 458, (kid(STOLEN),))


def test_a_refusal_between_the_key_list_and_the_recovery_is_taken_back(
    local_device: Device,
) -> None:
    """A recovery publishes the key list that revokes the stolen key, then re-signs what it
    names. A device checking in between sees what it serves under a revoked key and reports
    FAILED; the re-signed manifest of the same release must then say it serves after all, or
    the server shows the device failed for good (a race a full test run on busy cores hit)."""
    device = local_device
    serving = device.release("1.5.0", 5)
    assert device.offer(serving, STOLEN) == ""
    device.rotate(keys(2, [STOLEN, NEW], [kid(STOLEN)]))
    assert "(0 of 1 required)" in device.offer(serving, STOLEN)
    recovery = manifest_pb2.Manifest()
    recovery.CopyFrom(serving)
    recovery.explicit_rollback, recovery.rollback_from = True, 6
    recovery.recovery_keylist_version = 2
    before = len(device.reports)
    assert device.offer(recovery, *ROOTS) == ""
    after = [(r.version, r.state) for r in device.reports[before:]]
    assert after == [("1.5.0", device_pb2.INSTALLED)], after
    assert device.serving() == "1.5.0"
    # Once said, not again at each check-in.
    device.offer(recovery, *ROOTS)
    assert len(device.reports) == before + 1
