"""Server storage: schema versions and migrations (SQLite here; PostgreSQL with issue 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet_server.errors import DataDirError
from fleet_server.storage.db import SCHEMA_VERSION, Database

V1_MODELS = """
CREATE TABLE models (
    model_name VARCHAR(64) NOT NULL, version VARCHAR(32) NOT NULL, variant VARCHAR(32) NOT NULL,
    release_counter BIGINT NOT NULL, sha256 VARCHAR(64) NOT NULL, size BIGINT NOT NULL,
    edgetpu BOOLEAN NOT NULL, envelope BLOB NOT NULL, created_at BIGINT NOT NULL,
    PRIMARY KEY (model_name, version))
"""
V1_DEVICE_MODELS = """
CREATE TABLE device_models (
    device_id VARCHAR(64) NOT NULL, model_name VARCHAR(64) NOT NULL, version VARCHAR(32) NOT NULL,
    state VARCHAR(16) NOT NULL, detail VARCHAR(1024) NOT NULL, updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, model_name))
"""


def test_a_version_1_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE schema_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(255))")
        )
        conn.execute(sa.text("INSERT INTO schema_meta VALUES ('schema_version', '1')"))
        conn.execute(sa.text(V1_MODELS))
        conn.execute(sa.text(V1_DEVICE_MODELS))
        conn.execute(
            sa.text(
                "CREATE TABLE deployments (model_name VARCHAR(64) PRIMARY KEY, "
                "version VARCHAR(32) NOT NULL, updated_at BIGINT NOT NULL)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO models VALUES ('m', '1.0.0', 'int8', 1, :sha, 10, 0, x'00', 0)"),
            {"sha": "ab" * 32},
        )
    engine.dispose()
    db = Database(url)
    db.create_schema()
    (row,) = db.list_models()
    assert (row.model_name, row.fallback_sha256) == ("m", None)
    assert db.model_by_sha("ab" * 32) is not None
    with db.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM schema_meta")).scalar()
    assert version == str(SCHEMA_VERSION) == "7"
    db.create_schema()  # idempotent
    db.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    db = Database(url)
    db.create_schema()
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_meta SET value = '99'"))
    with pytest.raises(DataDirError, match="newer than this server's"):
        db.create_schema()
    db.close()


def test_devices_of_the_same_name_enrolling_at_once_get_distinct_ids(tmp_path: Path) -> None:
    import threading

    db = Database(f"sqlite:///{tmp_path / 'e.db'}")
    db.create_schema()
    ids: list[str] = []
    errors: list[BaseException] = []

    def enroll(i: int) -> None:
        try:
            ids.append(db.add_device("raspberrypi", f"token-{i}", {}, {}))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=enroll, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 8 and "raspberrypi" in ids
    db.close()


def test_two_releases_cannot_share_a_counter(tmp_path: Path) -> None:
    from fleet_server.errors import AlreadyExistsError
    from fleet_server.storage.db import ModelRow

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    db.create_schema()
    row = ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0)
    db.add_model(row)
    with pytest.raises(AlreadyExistsError, match="taken by a concurrent push"):
        db.add_model(ModelRow("m", "1.0.1", "int8", 1, "cd" * 32, 10, False, b"x", 0))
    db.close()
