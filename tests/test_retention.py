"""Issue 22 item 8: deleting model versions and keeping only the newest, guarded for what the
fleet needs, through the artifact store (files shared by versions stay; an orphan goes once
older than the grace period, so a push between storing its file and recording its release
never loses it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.artifacts.store import ArtifactStore
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import ConflictError
from fleet_server.rollouts.retention import GRACE_S, Retention
from fleet_server.simulator import SimDevice
from fleet_server.storage.db import Database
from tests.harness import REPO, Server

DATA = REPO / "tests" / "data"


def _row(version: str, sha: str, counter: int) -> ModelRow:
    return ModelRow("m", version, "int8", counter, sha, 10, False, b"x", int(time.time()))


def test_files_shared_by_another_version_stay_and_young_orphans_wait(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    catalog, artifacts = CatalogStore(db), ArtifactStore(tmp_path / "artifacts")
    shared, own, young = (artifacts.put([bytes([n]) * 100], max_bytes=100)[0] for n in (1, 2, 3))
    catalog.add_model(_row("1.0.0", shared, 1))
    catalog.add_model(_row("1.1.0", shared, 2))
    catalog.add_model(_row("1.2.0", own, 3))
    old = time.time() - GRACE_S - 60
    for sha in (shared, own):
        os.utime(artifacts.root / f"{sha}.tflite", (old, old))
    retention = Retention(db, artifacts)
    swept = retention.delete("m", "1.0.0")
    assert (swept.deleted, swept.files) == (["1.0.0"], 0)  # 1.1.0 uses the file
    assert artifacts.path(shared).exists()
    # `young` belongs to no version (a push that has not recorded its release yet): it stays
    # until it is older than the grace period.
    swept = retention.delete("m", "1.2.0")
    assert swept.files == 1 and not (artifacts.root / f"{own}.tflite").exists()
    assert artifacts.path(young).exists()
    catalog.deploy("m", "1.1.0")
    with pytest.raises(ConflictError, match="deployed to the fleet"):
        retention.delete("m", "1.1.0")
    assert catalog.newest_version("m") == "1.1.0"  # a deleted release is not the newest
    db.close()


@pytest.mark.slow
def test_delete_and_prune_refuse_what_the_fleet_needs(
    server_factory: Callable[..., Server], broker_url: str
) -> None:
    server = server_factory(broker_url)
    files = {"1.0.0": "digits_local_float.tflite", "1.1.0": "digits_local_int8.tflite",
             "1.2.0": "digits_local_float.tflite", "1.3.0": "digits_local_int8.tflite"}  # fmt: skip
    for version, name in files.items():
        server.admin("models", "push", str(DATA / name), "--name", "digits", "--version", version)
    server.admin("deploy", "digits", "1.1.0")
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "cam-1")
    device.check_in()  # installs 1.1.0 and says so
    device.close()
    server.admin("deploy", "digits", "1.3.0")

    deployed = server.admin("models", "delete", "digits", "1.3.0", check=False)
    assert deployed.returncode == 1 and "deployed to the fleet" in deployed.stderr
    served = server.admin("models", "delete", "digits", "1.1.0", check=False)
    assert "devices serve it (cam-1)" in served.stderr, served.stderr
    dry = server.admin("models", "prune", "digits", "--keep", "1", "--dry-run").stdout
    assert "would delete 1.0.0" in dry and "would delete 1.2.0" in dry
    assert "kept         1.1.0: devices serve it" in dry and "1.3.0: one of the 1 newest" in dry
    assert "1.0.0" in server.admin("models", "list").stdout  # a dry run deletes nothing
    pruned = server.admin("models", "prune", "digits", "--keep", "1").stdout
    assert "deleted      1.0.0" in pruned and "deleted      1.2.0" in pruned
    server.admin("models", "delete", "digits", "1.1.0", "--force")
    listed = server.admin("models", "list").stdout
    assert "1.3.0" in listed and not any(v in listed for v in ("1.0.0", "1.1.0", "1.2.0"))
    again = server.admin("models", "push", str(DATA / "digits_local_int8.tflite"), "--name",
                         "digits", "--version", "1.2.0", check=False)  # fmt: skip
    assert "was deleted; a version is never reused" in again.stderr
    audit = server.admin("audit").stdout
    assert "DeleteModelVersion" in audit and "PruneModels" in audit
