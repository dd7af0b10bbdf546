"""Issue 21 item 4 with real processes: a stolen release key fast-forwards the fleet (a release
at counter 458 that every later one is "older" than); ``edgefleet keys recover`` revokes the
key and sends the devices back to the admins' release, and what the key signed is refused from
then on. A k-of-n fleet: fewer root keys than the threshold recover nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleet_server.catalog.store import CatalogStore
from fleet_server.signing.keys import KeyStore, load_private_key, sign_envelope
from fleet_server.storage.db import Database
from protos import admin_pb2, admin_pb2_grpc, manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE
from tests.harness import Agent, Server, run_cli
from tests.test_fleet_e2e import wait_state

pytestmark = pytest.mark.slow

FORGED = "9.9.358"


def steal_and_fast_forward(server: Server) -> str:
    """What an attacker with the release key file and the server's disk does: re-sign the
    pushed release at counter 458 with the stolen key and write it into the database."""
    keys = KeyStore(server.data_dir / "keys")
    (stolen,) = keys.keylist().release_keys
    signer = keys.manifest_signer()
    catalog = CatalogStore(Database(f"sqlite:///{server.data_dir / 'fleet.db'}"))
    for row in catalog.get_variants("colors", FORGED):
        manifest = manifest_pb2.Manifest.FromString(
            manifest_pb2.Envelope.FromString(row.envelope).payload
        )
        manifest.release_counter = 458
        envelope = signer.sign(manifest)
        catalog.set_envelope("colors", FORGED, row.variant, envelope.SerializeToString())
    return stolen.keyid


def test_keys_recover_undoes_a_stolen_keys_fast_forward_on_running_devices(
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
    tmp_path: Path,
) -> None:
    data = tmp_path / "server"
    run_cli(
        "edgefleet-server", "init", "--data-dir", str(data), "--root-keys", "3",
        "--root-threshold", "2",
    )  # fmt: skip
    server = server_factory(None, data_dir=data)
    model = str(color_models / "color_float.tflite")
    server.admin("models", "push", model, "--name", "colors", "--version", "1.0.0", "--deploy")
    agents = [agent_factory(name, server) for name in ("dev-a", "dev-b")]
    for agent in agents:
        wait_state(server, agent.name, "colors", "1.0.0", "INSTALLED")

    server.admin("models", "push", model, "--name", "colors", "--version", FORGED)
    stolen = steal_and_fast_forward(server)
    server.admin("deploy", "colors", FORGED)
    for agent in agents:
        wait_state(server, agent.name, "colors", FORGED, "INSTALLED")
    # Fast-forwarded: the admins' release is "older" than the floor the stolen key set.
    server.admin("deploy", "colors", "1.0.0")
    for agent in agents:
        refused = wait_state(server, agent.name, "colors", "1.0.0", "FAILED")
        assert "458" in refused["detail"], refused

    # Below the root threshold: refused, nothing published, nothing deployed.
    one = sorted(server.root_key_dir.glob("root-*.key"))[0]
    # The server knows release 2 only (the thief wrote past it): devices go back from their
    # floor 458 because only the revoked key set it, not because the recovery starts above it.
    args = ("keys", "recover", "--revoke", stolen, "--model", "colors=1.0.0")
    short = server.admin(*args, "--root-key", str(one), check=False)
    assert short.returncode == 1, short.stdout + short.stderr
    assert "1 of the fleet's root keys at hand; 2 must sign" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1
    assert "version 1 " in server.admin("keys", "list").stdout
    # An unknown model is the server's answer, before any root key is read.
    unknown = server.admin("keys", "recover", "--revoke", stolen, "--model", "nope=1.0.0",
                           "--root-key", str(tmp_path / "missing.key"), check=False)  # fmt: skip
    assert unknown.returncode == 1 and "nope" in unknown.stderr, unknown.stderr

    bad_key = server.admin("keys", "recover", "--revoke", "ab" * 8, "--model", "colors=1.0.0",
                           "--root-key-dir", str(server.root_key_dir), check=False)  # fmt: skip
    assert bad_key.returncode == 1, bad_key.stdout + bad_key.stderr
    assert f"release key(s) {'ab' * 8} not in key list version 1" in bad_key.stderr

    out = server.admin(*args, "--root-key-dir", str(server.root_key_dir)).stdout
    assert f"published key list version 2: revokes {stolen}" in out
    assert "deployed colors 1.0.0 as a recovery" in out
    assert "the floor's signers are unknown" in out
    for agent in agents:
        wait_state(server, agent.name, "colors", "1.0.0", "INSTALLED")
    audit = server.admin("audit").stdout
    assert sum("CommitRecovery" in line for line in audit.splitlines()) == 1
    # Run again (as after a lost connection): no second key list, the recovery committed again.
    again = server.admin(*args, "--root-key-dir", str(server.root_key_dir)).stdout
    assert f"key list version 2 already revokes {stolen}" in again
    assert "version 2 " in server.admin("keys", "list").stdout

    # The stolen key's release again: devices refuse it (its key is revoked, it counts for
    # nothing) and keep serving 1.0.0.
    server.admin("deploy", "colors", FORGED)
    for agent in agents:
        refused = wait_state(server, agent.name, "colors", FORGED, "FAILED")
        assert "enough pinned release keys" in refused["detail"], refused


class _Admin:
    """The admin API over gRPC, as a client other than the CLI would call it."""

    def __init__(self, server: Server) -> None:
        token = (server.data_dir / "admin.token").read_text(encoding="utf-8").strip()
        self._metadata = [("authorization", f"Bearer {token}")]
        credentials = grpc.ssl_channel_credentials(root_certificates=server.ca_file.read_bytes())
        self.channel = grpc.secure_channel(server.address, credentials)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    def call(self, method: str, request: object) -> Any:
        return getattr(self.stub, method)(request, metadata=self._metadata, timeout=30)

    def refused(self, method: str, request: object) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            self.call(method, request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        return str(caught.value.details())


def test_the_server_commits_only_the_recovery_it_prepares_with_the_root_threshold(
    server_factory: Callable[..., Server], color_models: Path, tmp_path: Path
) -> None:
    data = tmp_path / "server"
    run_cli(
        "edgefleet-server", "init", "--data-dir", str(data), "--root-keys", "3",
        "--root-threshold", "2",
    )  # fmt: skip
    server = server_factory(None, data_dir=data)
    model = str(color_models / "color_float.tflite")
    for version in ("1.0.0", "2.0.0"):
        server.admin("models", "push", model, "--name", "colors", "--version", version)
    roots = [load_private_key(p) for p in sorted(server.root_key_dir.glob("root-*.key"))]
    keys = KeyStore(data / "keys")
    (stolen,) = keys.keylist().release_keys
    admin = _Admin(server)
    try:
        releases = [admin_pb2.DeployRequest(model_name="colors", version="1.0.0")]
        prepared = admin.call(
            "PrepareRecovery",
            admin_pb2.PrepareRecoveryRequest(revoke_keyids=[stolen.keyid], models=releases),
        )
        assert prepared.keylist_version == 2
        keys.revoke_release([stolen.keyid], root_key_files=sorted(server.root_key_dir.iterdir()))
        again = admin.call(
            "PrepareRecovery",
            admin_pb2.PrepareRecoveryRequest(
                revoke_keyids=[stolen.keyid], models=releases, floor=458
            ),
        )
        assert again.keylist_version == 2  # revoked already: the current list
        (payload,) = again.unsigned_manifests
        manifest = manifest_pb2.Manifest.FromString(payload)
        assert manifest.explicit_rollback and manifest.rollback_from == 458
        assert manifest.recovery_keylist_version == 2 and manifest.release_counter == 1

        def signed(data: bytes, signers: list[Any]) -> manifest_pb2.Envelope:
            return sign_envelope(MANIFEST_PAYLOAD_TYPE, data, signers)

        one = admin_pb2.CommitRecoveryRequest(envelopes=[signed(payload, roots[:1])])
        assert "1 valid root-key signature(s); an explicit rollback needs 2" in admin.refused(
            "CommitRecovery", one
        )
        changed = manifest_pb2.Manifest()
        changed.CopyFrom(manifest)
        changed.sha256 = "cd" * 32
        other = signed(changed.SerializeToString(deterministic=True), roots[:2])
        assert "not the rollback manifest the server prepared" in admin.refused(
            "CommitRecovery", admin_pb2.CommitRecoveryRequest(envelopes=[other])
        )
        as_rollback = admin_pb2.AttachSignaturesRequest(envelope=signed(payload, roots[:2]))
        assert "committed with 'edgefleet keys recover'" in admin.refused(
            "CommitRollback", as_rollback
        )
        plain = admin.call(
            "PrepareRollback", admin_pb2.DeployRequest(model_name="colors", version="1.0.0")
        )
        not_recovery = signed(plain.unsigned_manifests[0], roots[:2])
        assert "names key list version 0, the server's is 2" in admin.refused(
            "CommitRecovery", admin_pb2.CommitRecoveryRequest(envelopes=[not_recovery])
        )
        done = admin.call(
            "CommitRecovery",
            admin_pb2.CommitRecoveryRequest(envelopes=[signed(payload, roots[:2])]),
        )
        assert [(m.model_name, m.version, m.deployed) for m in done.models] == [
            ("colors", "1.0.0", True)
        ]
    finally:
        admin.channel.close()
    audit = server.admin("audit").stdout
    assert sum("CommitRecovery" in line for line in audit.splitlines()) == 4  # 3 refused, 1 ok
