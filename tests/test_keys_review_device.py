"""Issue 21's recovery from a stolen release key attacked with real processes: a real server and
agent, the thief's release written past the server (tests/test_key_recovery.py), and what the
admins do next. After ``keys recover --floor N`` the runbook says "push releases as usual": the
devices' floor is then N, so the server's next release must be above it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.catalog.store import CatalogStore
from fleet_server.signing.keys import KeyStore
from fleet_server.storage.db import Database
from protos import manifest_pb2
from tests.harness import Agent, Server, run_cli
from tests.test_fleet_e2e import wait_state
from tests.test_key_recovery import FORGED, steal_and_fast_forward

pytestmark = pytest.mark.slow


def test_after_a_recovery_with_floor_the_next_push_installs_on_the_recovered_devices(
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(None)
    model = str(color_models / "color_float.tflite")
    server.admin("models", "push", model, "--name", "colors", "--version", "1.0.0", "--deploy")
    agent = agent_factory("dev-a", server)
    wait_state(server, agent.name, "colors", "1.0.0", "INSTALLED")
    # The thief's release at counter 458, signed with the stolen key past the server: the
    # server knows it as release 2.
    server.admin("models", "push", model, "--name", "colors", "--version", FORGED)
    stolen = steal_and_fast_forward(server)
    server.admin("deploy", "colors", FORGED)
    wait_state(server, agent.name, "colors", FORGED, "INSTALLED")
    server.admin("deploy", "colors", "1.0.0")
    refused = wait_state(server, agent.name, "colors", "1.0.0", "FAILED")
    assert "458" in refused["detail"], refused

    # The runbook: give the N devices report as --floor.
    server.admin(
        "keys", "recover", "--revoke", stolen, "--model", "colors=1.0.0", "--floor", "458",
        "--root-key-dir", str(server.root_key_dir),
    )  # fmt: skip
    wait_state(server, agent.name, "colors", "1.0.0", "INSTALLED")

    # "Then push releases as usual": the admins' next release installs.
    server.admin("models", "push", model, "--name", "colors", "--version", "1.1.0", "--deploy")
    wait_state(server, agent.name, "colors", "1.1.0", "INSTALLED")


def test_a_device_enrolled_after_a_recovery_gets_the_models_the_recovery_did_not_name(
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(None)
    model = str(color_models / "color_float.tflite")
    server.admin("models", "push", model, "--name", "colors", "--version", "1.0.0", "--deploy")
    server.admin("models", "push", model, "--name", "shades", "--version", "1.0.0", "--deploy")
    agent = agent_factory("dev-a", server)
    wait_state(server, agent.name, "colors", "1.0.0", "INSTALLED")
    wait_state(server, agent.name, "shades", "1.0.0", "INSTALLED")
    server.admin("models", "push", model, "--name", "colors", "--version", FORGED)
    stolen = steal_and_fast_forward(server)
    server.admin("deploy", "colors", FORGED)
    wait_state(server, agent.name, "colors", FORGED, "INSTALLED")
    # Shades was signed by the same key (the server's own): the recovery stops before signing
    # anything and says so, rather than leave devices refusing it.
    refused = server.admin(
        "keys", "recover", "--revoke", stolen, "--model", "colors=1.0.0",
        "--root-key-dir", str(server.root_key_dir), check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "shades 1.0.0" in refused.stderr, refused.stderr
    assert "--leave-stranded" in refused.stderr
    assert "published key list" not in refused.stdout
    server.admin(
        "keys", "recover", "--revoke", stolen, "--model", "colors=1.0.0",
        "--model", "shades=1.0.0", "--root-key-dir", str(server.root_key_dir),
    )  # fmt: skip
    wait_state(server, agent.name, "colors", "1.0.0", "INSTALLED")
    late = agent_factory("dev-late", server)
    wait_state(server, late.name, "colors", "1.0.0", "INSTALLED")
    wait_state(server, late.name, "shades", "1.0.0", "INSTALLED")
    wait_state(server, agent.name, "shades", "1.0.0", "INSTALLED")
    assert agent.output().count("updating shades") == 1  # kept, not downloaded again


def test_a_recovery_with_an_old_copy_of_the_key_files_publishes_nothing(
    server_factory: Callable[..., Server], color_models: Path, tmp_path: Path
) -> None:
    server = server_factory(None)
    model = str(color_models / "color_float.tflite")
    server.admin("models", "push", model, "--name", "colors", "--version", "1.0.0", "--deploy")
    (stolen,) = [k.keyid for k in KeyStore(server.data_dir / "keys").keylist().release_keys]
    # A backup of the data dir, taken before a rotation: the same fleet, an older key list.
    backup = tmp_path / "backup"
    shutil.copytree(server.data_dir, backup)
    server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir))
    before = (backup / "keys" / "keylist.bin").read_bytes()
    token = (server.data_dir / "admin.token").read_text().strip()
    refused = run_cli(
        "edgefleet", "--server", server.address, "--token", token, "--ca-file",
        str(server.ca_file), "--data-dir", str(backup), "keys", "recover", "--revoke", stolen,
        "--model", "colors=1.0.0", "--root-key-dir", str(server.root_key_dir), check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "is --data-dir the server's?" in refused.stderr
    assert "published" not in refused.stdout
    assert (backup / "keys" / "keylist.bin").read_bytes() == before


def test_nobody_signs_again_what_a_revoked_key_signed(
    server_factory: Callable[..., Server], color_models: Path, tmp_path: Path
) -> None:
    server = server_factory(None)
    model = str(color_models / "color_float.tflite")
    server.admin("models", "push", model, "--name", "colors", "--version", "1.0.0", "--deploy")
    server.admin("models", "push", model, "--name", "colors", "--version", FORGED)
    stolen = steal_and_fast_forward(server)
    server.admin(
        "keys", "recover", "--revoke", stolen, "--model", "colors=1.0.0",
        "--root-key-dir", str(server.root_key_dir),
    )  # fmt: skip
    # Someone with a current release key (or a careless signer) signs the thief's release.
    keys = server.data_dir / "keys"
    (current,) = list(keys.glob("release-*.key"))
    catalog = CatalogStore(Database(f"sqlite:///{server.data_dir / 'fleet.db'}"))
    (row,) = catalog.get_variants("colors", FORGED)
    payload = tmp_path / "forged.manifest"
    payload.write_bytes(manifest_pb2.Envelope.FromString(row.envelope).payload)
    run_cli("edgefleet", "manifest", "sign", str(payload), "--key", str(current))
    refused = server.admin("manifest", "attach", str(payload.with_suffix(".signed")), check=False)
    assert refused.returncode == 1 and f"signed by revoked key(s) {stolen}" in refused.stderr
