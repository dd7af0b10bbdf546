"""Steps that bring an older database up to :data:`SCHEMA_VERSION`, one transaction each."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from fleet_server.storage.schema import (
    admins,
    audit_log,
    benchmarks,
    deliveries,
    deployments,
    device_events,
    device_logs,
    downloads,
    enrollment_tokens,
    enrollments,
    fleet_state,
    maintenance_windows,
    model_history,
    models,
    refusal_clears,
    releases,
    retired_certificates,
    rollout_devices,
    rollouts,
    routing_policies,
    settings,
    telemetry_history,
    usage,
    webhook_attempts,
    webhook_outbox,
    webhooks,
)

__all__ = ["MIGRATIONS"]


def _v1_to_v2(conn: sa.Connection) -> None:
    """Version 2: a model version may carry a CPU fallback artifact."""
    conn.execute(sa.text("ALTER TABLE models ADD COLUMN fallback_sha256 VARCHAR(64)"))


def _v2_to_v3(conn: sa.Connection) -> None:
    """Version 3: a model version carries a smoke-test sample artifact."""
    conn.execute(sa.text("ALTER TABLE models ADD COLUMN sample_sha256 VARCHAR(64)"))


def _v3_to_v4(conn: sa.Connection) -> None:
    """Version 4: the registry keeps what a device serves apart from its last update report."""
    conn.execute(sa.text("ALTER TABLE device_models ADD COLUMN active_version VARCHAR(32)"))


def _v4_to_v5(conn: sa.Connection) -> None:
    """Version 5: a model version may have a zstd-compressed copy for transport."""
    conn.execute(sa.text("ALTER TABLE models ADD COLUMN compressed_sha256 VARCHAR(64)"))


def _v5_to_v6(conn: sa.Connection) -> None:
    """Version 6: a deployment may carry its own manifest (an explicit rollback)."""
    conn.execute(sa.text(f"ALTER TABLE deployments ADD COLUMN envelope {_blob(conn)}"))


def _blob(conn: sa.Connection) -> str:
    return "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"


def _v6_to_v7(conn: sa.Connection) -> None:
    """Version 7: one release counter per model, even with concurrent pushes."""
    conn.execute(
        sa.text("CREATE UNIQUE INDEX uq_models_release ON models (model_name, release_counter)")
    )


def _v7_to_v8(conn: sa.Connection) -> None:
    """Version 8: devices can be revoked."""
    conn.execute(sa.text("ALTER TABLE devices ADD COLUMN revoked_at BIGINT"))


def _v8_to_v9(conn: sa.Connection) -> None:
    """Version 9: staged rollouts and the audit log (new tables only)."""
    for table in (rollouts, rollout_devices, audit_log):
        table.create(conn, checkfirst=True)


def _v9_to_v10(conn: sa.Connection) -> None:
    """Version 10: a release has several variants (one row each); rollback manifests are
    EnvelopeSets (one per variant)."""
    from protos import manifest_pb2  # noqa: PLC0415

    releases.create(conn, checkfirst=True)
    conn.execute(
        sa.text(
            "INSERT INTO releases (model_name, version, release_counter, created_at) "
            "SELECT model_name, version, release_counter, created_at FROM models"
        )
    )
    rebuilt = models.to_metadata(sa.MetaData(), name="models_v10")
    rebuilt.create(conn)
    columns = (
        "model_name, version, variant, release_counter, sha256, size, edgetpu, envelope, "
        "created_at, fallback_sha256, sample_sha256, compressed_sha256"
    )
    conn.execute(
        sa.text(
            f"INSERT INTO models_v10 ({columns}, quantization, requirements) "  # noqa: S608 - constants
            f"SELECT {columns}, CASE WHEN edgetpu THEN 'edgetpu' ELSE '' END, '{{}}' FROM models"
        )
    )
    conn.execute(sa.text("DROP TABLE models"))
    conn.execute(sa.text("ALTER TABLE models_v10 RENAME TO models"))
    for table, key, column in (
        (deployments, deployments.c.model_name, deployments.c.envelope),
        (rollouts, rollouts.c.rollout_id, rollouts.c.rollback_envelope),
    ):
        for row_key, blob in conn.execute(sa.select(key, column).where(column.is_not(None))):
            wrapped = manifest_pb2.EnvelopeSet(
                envelopes=[manifest_pb2.Envelope.FromString(bytes(blob))]
            )
            conn.execute(
                table.update()
                .where(key == row_key)
                .values({column.name: wrapped.SerializeToString()})
            )


def _v10_to_v11(conn: sa.Connection) -> None:
    """Version 11: devices hold X.509 certificates; enrollment tokens are rows."""
    conn.execute(sa.text("ALTER TABLE devices ADD COLUMN cert_serial VARCHAR(40)"))
    conn.execute(sa.text("ALTER TABLE devices ADD COLUMN cert_not_after BIGINT"))
    enrollment_tokens.create(conn, checkfirst=True)


def _v11_to_v12(conn: sa.Connection) -> None:
    """Version 12: the fleet state generation."""
    fleet_state.create(conn, checkfirst=True)
    conn.execute(fleet_state.insert().values(id=1, generation=1))


def _v12_to_v13(conn: sa.Connection) -> None:
    """Version 13: MQTT sequence tracking, online state, device events."""
    for statement in (
        "ALTER TABLE devices ADD COLUMN telemetry_epoch VARCHAR(32)",
        "ALTER TABLE devices ADD COLUMN telemetry_count BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN telemetry_gaps BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN online_state VARCHAR(16)",
        "ALTER TABLE devices ADD COLUMN online_at BIGINT",
    ):
        conn.execute(sa.text(statement))
    device_events.create(conn, checkfirst=True)


def _v13_to_v14(conn: sa.Connection) -> None:
    """Version 14: telemetry health gates on rollouts. (A database migrated from before
    version 8 created the rollout tables with these columns already.)"""
    inspector = sa.inspect(conn)
    for table, column, kind in (
        ("rollouts", "health_gate", "TEXT NOT NULL DEFAULT '{}'"),
        ("rollout_devices", "baseline_p95_ms", "FLOAT"),
        ("rollout_devices", "health_requests", "BIGINT NOT NULL DEFAULT 0"),
        ("rollout_devices", "health_errors", "BIGINT NOT NULL DEFAULT 0"),
        ("rollout_devices", "health_p95_ms", "FLOAT"),
        ("rollout_devices", "detail", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ):
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


def _v14_to_v15(conn: sa.Connection) -> None:
    """Version 15: cloud routing policies and settings (the price table)."""
    routing_policies.create(conn, checkfirst=True)
    settings.create(conn, checkfirst=True)


def _v15_to_v16(conn: sa.Connection) -> None:
    """Version 16: inference usage per device, model and routing policy."""
    usage.create(conn, checkfirst=True)


def _v16_to_v17(conn: sa.Connection) -> None:
    """Version 17: device benchmarks."""
    benchmarks.create(conn, checkfirst=True)


def _v17_to_v18(conn: sa.Connection) -> None:
    """Version 18: telemetry history, and cloud spend per UTC day in usage."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("usage")}
    for column, kind in (
        ("day", "BIGINT NOT NULL DEFAULT 0"),
        ("day_cloud_requests", "BIGINT NOT NULL DEFAULT 0"),
        ("day_cloud_cost", "FLOAT NOT NULL DEFAULT 0"),
    ):
        if column not in columns:
            conn.execute(sa.text(f"ALTER TABLE usage ADD COLUMN {column} {kind}"))
    telemetry_history.create(conn, checkfirst=True)


def _v18_to_v19(conn: sa.Connection) -> None:
    """Version 19: telemetry history per model over the fleet."""
    model_history.create(conn, checkfirst=True)


def _v19_to_v20(conn: sa.Connection) -> None:
    """Version 20: device events carry when the server stored them (they are pruned by it;
    the device's own time may be anything). Older events count as stored when sent."""
    if "stored_at" not in {c["name"] for c in sa.inspect(conn).get_columns("device_events")}:
        conn.execute(
            sa.text("ALTER TABLE device_events ADD COLUMN stored_at BIGINT NOT NULL DEFAULT 0")
        )
    conn.execute(sa.text("UPDATE device_events SET stored_at = at"))
    index = "ix_device_events_stored_at"
    conn.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {index} ON device_events (stored_at)"))


def _v20_to_v21(conn: sa.Connection) -> None:
    """Version 21: devices report the releases they refuse, and operators clear refusals."""
    if "refusals" not in {c["name"] for c in sa.inspect(conn).get_columns("devices")}:
        conn.execute(sa.text("ALTER TABLE devices ADD COLUMN refusals TEXT"))
    refusal_clears.create(conn, checkfirst=True)


def _v21_to_v22(conn: sa.Connection) -> None:
    """Version 22: kill-safe enrollment. Devices record their first check-in (a device without
    one is deleted as a ghost after a while); every device enrolled before counts as checked
    in, so none of them is ever deleted as a ghost. Enrollment answers are kept for repeats; the
    certificates of deleted ghosts stay in the CRL."""
    if "first_checkin_at" not in {c["name"] for c in sa.inspect(conn).get_columns("devices")}:
        conn.execute(sa.text("ALTER TABLE devices ADD COLUMN first_checkin_at BIGINT"))
    conn.execute(sa.text("UPDATE devices SET first_checkin_at = last_seen"))
    enrollments.create(conn, checkfirst=True)
    retired_certificates.create(conn, checkfirst=True)


def _v22_to_v23(conn: sa.Connection) -> None:
    """Version 23: end-to-end delivery. Each device's sequence ledger (what is stored, what is
    awaited), and the event that last set a device's model state (late events do not win)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("devices")}
    if "telemetry_ledger" not in columns:
        conn.execute(sa.text("ALTER TABLE devices ADD COLUMN telemetry_ledger TEXT"))
    columns = {c["name"] for c in sa.inspect(conn).get_columns("device_models")}
    if "event_epoch" not in columns:
        conn.execute(sa.text("ALTER TABLE device_models ADD COLUMN event_epoch VARCHAR(32)"))
        conn.execute(sa.text("ALTER TABLE device_models ADD COLUMN event_seq BIGINT"))


def _v23_to_v24(conn: sa.Connection) -> None:
    """Version 24: which device was sent which artifact whole (benchmarks count only those)."""
    deliveries.create(conn, checkfirst=True)


def _v24_to_v25(conn: sa.Connection) -> None:
    """Version 25: how far each device's download of each artifact has come."""
    downloads.create(conn, checkfirst=True)


def _v25_to_v26(conn: sa.Connection) -> None:
    """Version 26: named admins."""
    admins.create(conn, checkfirst=True)


def _v26_to_v27(conn: sa.Connection) -> None:
    """Version 27: notifications (webhooks, their outbox and delivery log; new tables only)."""
    for table in (webhooks, webhook_outbox, webhook_attempts):
        table.create(conn, checkfirst=True)


def _v27_to_v28(conn: sa.Connection) -> None:
    """Version 28: admins may hold a client certificate from the fleet CA."""
    if "cert_serial" not in {c["name"] for c in sa.inspect(conn).get_columns("admins")}:
        conn.execute(sa.text("ALTER TABLE admins ADD COLUMN cert_serial VARCHAR(40)"))
        conn.execute(sa.text("ALTER TABLE admins ADD COLUMN cert_not_after BIGINT"))


def _v28_to_v29(conn: sa.Connection) -> None:
    """Version 29: a device's recent log, asked for and uploaded (a new table only)."""
    device_logs.create(conn, checkfirst=True)


def _v29_to_v30(conn: sa.Connection) -> None:
    """Version 30: scheduled rollouts (a start time, and when it started: every rollout before
    started when it was created) and maintenance windows."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("rollouts")}
    for column in ("start_at", "started_at"):
        if column not in columns:
            conn.execute(sa.text(f"ALTER TABLE rollouts ADD COLUMN {column} BIGINT"))
    conn.execute(sa.text("UPDATE rollouts SET started_at = created_at WHERE started_at IS NULL"))
    maintenance_windows.create(conn, checkfirst=True)


# From version N to N + 1.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
    6: _v6_to_v7,
    7: _v7_to_v8,
    8: _v8_to_v9,
    9: _v9_to_v10,
    10: _v10_to_v11,
    11: _v11_to_v12,
    12: _v12_to_v13,
    13: _v13_to_v14,
    14: _v14_to_v15,
    15: _v15_to_v16,
    16: _v16_to_v17,
    17: _v17_to_v18,
    18: _v18_to_v19,
    19: _v19_to_v20,
    20: _v20_to_v21,
    21: _v21_to_v22,
    22: _v22_to_v23,
    23: _v23_to_v24,
    24: _v24_to_v25,
    25: _v25_to_v26,
    26: _v26_to_v27,
    27: _v27_to_v28,
    28: _v28_to_v29,
    29: _v29_to_v30,
}
