"""Issue 21 item 4 with real processes: a stolen release key fast-forwards the fleet (a release
at counter 458 that every later one is "older" than); ``edgefleet keys recover`` revokes the
key and sends the devices back to the admins' release, and what the key signed is refused from
then on. A k-of-n fleet: fewer root keys than the threshold recover nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.catalog.store import CatalogStore
from fleet_server.signing.keys import KeyStore
from fleet_server.storage.db import Database
from protos import manifest_pb2
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
