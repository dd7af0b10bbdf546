"""Server storage on both backends: SQLite (the default) and PostgreSQL (several replicas).

Every test here runs twice, against a SQLite file and against a fresh schema in a database the
session creates on the local PostgreSQL server.
"""

from __future__ import annotations

import secrets
import threading

import pytest
import sqlalchemy as sa

from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import AlreadyExistsError, AuthError, BadRequestError, DataDirError
from fleet_server.registry.ca import IssuedCert
from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from fleet_server.storage.schema import SCHEMA_VERSION
from fleet_server.telemetry.sequence import Ledger
from fleet_server.telemetry.store import IngestBatch, TelemetryStore

V1 = [
    "CREATE TABLE schema_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(255))",
    "INSERT INTO schema_meta VALUES ('schema_version', '1')",
    """CREATE TABLE devices (device_id VARCHAR(64) PRIMARY KEY, name VARCHAR(64) NOT NULL,
        token_sha256 VARCHAR(64) NOT NULL UNIQUE, labels TEXT NOT NULL,
        capabilities TEXT NOT NULL, enrolled_at BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        last_telemetry TEXT, last_telemetry_at BIGINT, last_telemetry_seq BIGINT)""",
    """CREATE TABLE models (
        model_name VARCHAR(64) NOT NULL, version VARCHAR(32) NOT NULL,
        variant VARCHAR(32) NOT NULL, release_counter BIGINT NOT NULL, sha256 VARCHAR(64) NOT NULL,
        size BIGINT NOT NULL, edgetpu BOOLEAN NOT NULL, envelope {blob} NOT NULL,
        created_at BIGINT NOT NULL, PRIMARY KEY (model_name, version))""",
    """CREATE TABLE device_models (
        device_id VARCHAR(64) NOT NULL, model_name VARCHAR(64) NOT NULL,
        version VARCHAR(32) NOT NULL, state VARCHAR(16) NOT NULL, detail VARCHAR(1024) NOT NULL,
        updated_at BIGINT NOT NULL, PRIMARY KEY (device_id, model_name))""",
    """CREATE TABLE deployments (model_name VARCHAR(64) PRIMARY KEY,
        version VARCHAR(32) NOT NULL, updated_at BIGINT NOT NULL)""",
]


def make_v1_database(db_url: str, variant: str, edgetpu: bool) -> None:
    """A database as schema version 1 left it, with one model version."""
    engine = sa.create_engine(db_url)
    blob = "BYTEA" if engine.dialect.name == "postgresql" else "BLOB"
    with engine.begin() as conn:
        for statement in V1:
            conn.execute(sa.text(statement.format(blob=blob)))
        conn.execute(
            sa.text("INSERT INTO models VALUES ('m', '1.0.0', :v, 1, :sha, 10, :tpu, :env, 0)"),
            {"v": variant, "sha": "ab" * 32, "tpu": edgetpu, "env": b"\0"},
        )
    engine.dispose()


def test_a_version_1_database_is_migrated_and_keeps_its_rows(db_url: str) -> None:
    make_v1_database(db_url, "int8", edgetpu=False)
    db = Database(db_url)
    db.create_schema()
    catalog = CatalogStore(db)
    (row,) = catalog.list_models()
    assert (row.model_name, row.fallback_sha256) == ("m", None)
    assert catalog.model_by_sha("ab" * 32) is not None
    with db.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM schema_meta")).scalar()
    assert version == str(SCHEMA_VERSION) == "30"
    db.create_schema()  # idempotent
    first = db.generation()
    catalog.deploy("m", "1.0.0")
    assert db.generation() == first + 1  # what devices should run changed
    db.close()


def test_a_newer_database_is_refused(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_meta SET value = '99'"))
    with pytest.raises(DataDirError, match="newer than this server's"):
        db.create_schema()
    db.close()


def test_devices_of_the_same_name_enrolling_at_once_get_distinct_ids(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    devices = DeviceStore(db)
    ids: list[str] = []
    errors: list[BaseException] = []

    def enroll(i: int) -> None:
        try:
            ids.append(devices.add_device("raspberrypi", f"token-{i}", {}, {}))
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


def test_version_9_rollback_manifests_become_envelope_sets(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.storage import db as db_module
    from protos import manifest_pb2

    make_v1_database(db_url, "tpu", edgetpu=True)
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 9)
    db = Database(db_url)
    db.create_schema()
    catalog = CatalogStore(db)
    rollback = manifest_pb2.Envelope(payload_type="t", payload=b"p").SerializeToString()
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO deployments VALUES ('m', '1.0.0', 0, :env)"), {"env": rollback}
        )
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 10)
    db.create_schema()
    ((version, wrapped),) = catalog.deployments().values()
    assert version == "1.0.0" and wrapped is not None
    assert manifest_pb2.EnvelopeSet.FromString(wrapped).envelopes[0].payload == b"p"
    (row,) = catalog.get_variants("m", "1.0.0")
    assert (row.variant, row.quantization) == ("tpu", "edgetpu")
    assert catalog.next_release_counter("m") == 2
    db.close()


def test_version_17_usage_keeps_its_rows_and_gains_daily_spend_and_history(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.storage import db as db_module

    make_v1_database(db_url, "int8", edgetpu=False)
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 17)
    db = Database(db_url)
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device_id = devices.add_device("pi", "token", {}, {})
    with db.engine.begin() as conn:  # the usage table as version 17 made it, with a row
        conn.execute(sa.text("DROP TABLE usage"))
        conn.execute(
            sa.text(
                "CREATE TABLE usage (device_id VARCHAR(64), model_name VARCHAR(64), "
                "policy VARCHAR(32), served BIGINT NOT NULL, local_runs BIGINT NOT NULL, "
                "local_ms FLOAT NOT NULL, cloud_requests BIGINT NOT NULL, "
                "cloud_cost FLOAT NOT NULL, updated_at BIGINT NOT NULL, "
                "PRIMARY KEY (device_id, model_name, policy))"
            )
        )
        conn.execute(
            sa.text("INSERT INTO usage VALUES (:d, 'm', 'cascade', 10, 10, 5.0, 4, 0.4, 0)"),
            {"d": device_id},
        )
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 18)
    db.create_schema()
    telemetry.record_mqtt_batch(
        IngestBatch(usage={(device_id, "m", "cascade"): [5, 5, 1.0, 2, 0.2]})
    )
    with db.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM usage")).mappings().one()
        assert sa.inspect(conn).has_table("telemetry_history")
    assert (row["served"], row["cloud_requests"], row["cloud_cost"]) == (15, 6, pytest.approx(0.6))
    # Only what was added since the migration counts as today's spend.
    assert (row["day_cloud_requests"], row["day_cloud_cost"]) == (2, pytest.approx(0.2))
    db.close()


def test_daily_spend_restarts_on_a_new_day(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    device_id = devices.add_device("pi", "token", {}, {})
    key = (device_id, "m", "cloud")
    telemetry.record_mqtt_batch(IngestBatch(usage={key: [3, 0, 0.0, 3, 0.3]}))
    telemetry.record_mqtt_batch(IngestBatch(usage={key: [1, 0, 0.0, 1, 0.1]}))
    spend = "SELECT day, day_cloud_requests, day_cloud_cost, cloud_requests FROM usage"
    with db.engine.begin() as conn:
        day, requests, cost, total = conn.execute(sa.text(spend)).one()
        assert (requests, cost, total) == (4, pytest.approx(0.4), 4)
        conn.execute(sa.text("UPDATE usage SET day = day - 1"))  # as if written yesterday
    telemetry.record_mqtt_batch(IngestBatch(usage={key: [2, 0, 0.0, 2, 0.2]}))
    with db.engine.connect() as conn:
        assert conn.execute(sa.text(spend)).one() == (day, 2, pytest.approx(0.2), 6)
    db.close()


def test_history_buckets_add_up_and_are_pruned(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    telemetry = TelemetryStore(db)

    def row(bucket: int, requests: int, p95: float) -> dict[str, object]:
        return {"device_id": "d", "model_name": "m", "bucket": bucket, "requests": requests,
                "errors": 1, "cloud_requests": 0, "p50_ms": 1.0, "p95_ms": p95}  # fmt: skip

    telemetry.record_mqtt_batch(IngestBatch(history=[row(600, 5, 9.0), row(900, 7, 3.0)]))
    # Another replica's share of the same bucket: counts add, the worse latency stays.
    telemetry.record_mqtt_batch(IngestBatch(history=[row(600, 2, 4.0)]))
    select = "SELECT bucket, requests, errors, p95_ms FROM telemetry_history ORDER BY bucket"
    with db.engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.text(select))] == [
            (600, 7, 2, 9.0),
            (900, 7, 1, 3.0),
        ]
    fleet = "SELECT bucket, devices, requests, p95_weighted_ms, p95_max_ms FROM model_history"
    with db.engine.connect() as conn:  # per model over the fleet: one row per bucket
        assert [tuple(r) for r in conn.execute(sa.text(fleet + " ORDER BY bucket"))] == [
            (600, 2, 7, 5 * 9.0 + 2 * 4.0, 9.0),
            (900, 1, 7, 7 * 3.0, 3.0),
        ]
    telemetry.record_mqtt_batch(IngestBatch(prune_history_before=900))
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.text(select))] == [900]
        assert [r[0] for r in conn.execute(sa.text(fleet))] == [900]
    db.close()


def test_enrollment_tokens_are_spent_once_and_expire(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    devices = DeviceStore(db)
    devices.add_enrollment_token(
        "once", ttl_s=60, uses=1, labels={"site": "a"}, note="", created_by="t"
    )
    devices.add_enrollment_token("twice", ttl_s=60, uses=2, labels={}, note="", created_by="t")
    devices.add_enrollment_token("stale", ttl_s=-1, uses=5, labels={}, note="", created_by="t")
    issued = IssuedCert(b"pem", "ab12", 2_000_000_000)

    def enroll(token: str | None, name: str = "cam") -> str:
        return devices.enroll(
            name, token=token, key_sha256=secrets.token_hex(32),
            labels={"site": "own", "hw": "pi"}, capabilities={},
            certify=lambda _device_id: issued,
        ).device_id  # fmt: skip

    once = enroll("once")
    (row,) = devices.list_devices(once)
    # The token's labels win over the device's own; the certificate is recorded with it.
    assert row.labels == {"site": "a", "hw": "pi"}
    assert devices.device_certificate(once) == ("ab12", False)
    with pytest.raises(AuthError):
        enroll("once")
    assert enroll("twice") != enroll("twice")
    for spent in ("twice", "stale", "unknown"):
        with pytest.raises(AuthError):
            enroll(spent)
    assert len(devices.list_devices()) == 3  # nothing of the refused ones stayed

    # A CA that fails (or a database that fails) leaves no device and spends no use.
    devices.add_enrollment_token("spare", ttl_s=60, uses=1, labels={}, note="", created_by="t")

    def broken(_device_id: str) -> IssuedCert:
        raise BadRequestError("the CA refused")

    with pytest.raises(BadRequestError):
        devices.enroll(
            "lost",
            token="spare",  # noqa: S106 - a test token
            key_sha256="ab" * 32,
            labels={},
            capabilities={},
            certify=broken,
        )
    assert [d.device_id for d in devices.list_devices() if d.name == "lost"] == []
    assert enroll("spare", "lost") == "lost"
    # The bootstrap token (None) spends nothing.
    assert enroll(None, "boot") == "boot"
    listed = devices.list_enrollment_tokens()
    assert sorted(t["uses_left"] for t in listed) == [0, 0, 0, 5]
    stale = next(t for t in listed if t["uses_left"] == 5)
    assert devices.revoke_enrollment_token(stale["token_sha256"][:8]) == 1
    with pytest.raises(BadRequestError):
        devices.revoke_enrollment_token("ab")
    db.close()


def test_two_releases_cannot_share_a_counter(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0))
    with pytest.raises(AlreadyExistsError, match="taken by a concurrent push"):
        catalog.add_model(ModelRow("m", "1.0.1", "int8", 1, "cd" * 32, 10, False, b"x", 0))
    with pytest.raises(AlreadyExistsError, match="exists already"):
        catalog.add_model(ModelRow("m", "1.0.0", "int8", 2, "cd" * 32, 10, False, b"x", 0))
    db.close()


def test_registry_and_deployments_round_trip(db_url: str) -> None:
    db = Database(db_url)
    db.create_schema()
    catalog, devices, telemetry = CatalogStore(db), DeviceStore(db), TelemetryStore(db)
    device = devices.add_device("cam", "t", {"site": "lab"}, {"arch": "aarch64"})
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, True, b"env", 0))
    catalog.deploy("m", "1.0.0")
    assert catalog.deployments() == {"m": ("1.0.0", None)}
    catalog.deploy("m", "1.0.0", envelope=b"rollback")
    assert catalog.deployments() == {"m": ("1.0.0", b"rollback")}
    devices.set_device_model(device, "m", "1.0.0", "INSTALLED", "ok")
    devices.set_active_version(device, "m", "1.0.0")
    ledger = Ledger(epoch="e", highest=3, stored=3)
    telemetry.record_mqtt_batch(IngestBatch(telemetry={device: (ledger, {"seq": 3}, 1, 0)}))
    (row,) = devices.list_devices()
    assert row.labels == {"site": "lab"} and row.last_telemetry == {"seq": 3}
    assert row.models[0].active_version == "1.0.0"
    devices.set_certificate(device, "abc1", 2_000_000_000)
    assert devices.device_certificate(device) == ("abc1", False)
    devices.set_labels(device, {"floor": "2"}, ["site"])
    assert devices.get_device(device).labels == {"floor": "2"}
    devices.revoke(device)
    devices.revoke(device)  # idempotent
    assert devices.device_certificate(device) == ("abc1", True)
    assert devices.get_device(device).revoked_at
    db.close()
