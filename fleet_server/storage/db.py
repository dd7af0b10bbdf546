"""Tables and queries. Every method is one short transaction.

The schema carries a version in ``schema_meta``. A new database is created by ``create_all`` at
the current version; an older one is brought up to date by the steps in ``_MIGRATIONS``, each
in its own transaction. (A migration tool arrives with the fleet-server issue.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from fleet_server.errors import AlreadyExistsError, BadRequestError, DataDirError, NotFoundError

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "DeviceModelRow",
    "DeviceRow",
    "IngestBatch",
    "ModelRow",
]

SCHEMA_VERSION = 19
log = logging.getLogger(__name__)

metadata = sa.MetaData()

schema_meta = sa.Table(
    "schema_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("labels", sa.Text, nullable=False, default="{}"),
    sa.Column("capabilities", sa.Text, nullable=False, default="{}"),
    sa.Column("enrolled_at", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    sa.Column("last_telemetry", sa.Text, nullable=True),
    sa.Column("last_telemetry_at", sa.BigInteger, nullable=True),
    sa.Column("last_telemetry_seq", sa.BigInteger, nullable=True),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    # The device's current client certificate: any other serial is refused.
    sa.Column("cert_serial", sa.String(40), nullable=True),
    sa.Column("cert_not_after", sa.BigInteger, nullable=True),
    # MQTT: the spool epoch of the sequence, messages received, sequence gaps seen (lost
    # messages), and the retained state (online / offline / stopped) with its time.
    sa.Column("telemetry_epoch", sa.String(32), nullable=True),
    sa.Column("telemetry_count", sa.BigInteger, nullable=False, default=0),
    sa.Column("telemetry_gaps", sa.BigInteger, nullable=False, default=0),
    sa.Column("online_state", sa.String(16), nullable=True),
    sa.Column("online_at", sa.BigInteger, nullable=True),
)

device_events = sa.Table(
    "device_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("model_name", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(1024), nullable=False),
)

# One row: a counter bumped by every change to what any device should run or who it is
# (deployments, rollout assignments, signatures, revocations, certificates). Servers cache
# check-in answers per generation, so an unchanged fleet costs one read per check-in.
# Cloud routing policies: per model, for the devices matching a label selector ("{}" = all).
routing_policies = sa.Table(
    "routing_policies",
    metadata,
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("selector", sa.String(1024), primary_key=True),  # canonical JSON
    sa.Column("policy", sa.String(32), nullable=False),
    sa.Column("params", sa.Text, nullable=False, default="{}"),  # JSON: threshold, budgets...
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False, default=""),
)

# Inference served per device, model and routing policy, added up from telemetry windows (so
# agent restarts do not reset it): what `edgefleet routing costs` prices.
usage = sa.Table(
    "usage",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(32), primary_key=True),
    sa.Column("served", sa.BigInteger, nullable=False, default=0),  # requests answered
    sa.Column("local_runs", sa.BigInteger, nullable=False, default=0),
    sa.Column("local_ms", sa.Float, nullable=False, default=0.0),  # summed inference time
    sa.Column("cloud_requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("cloud_cost", sa.Float, nullable=False, default=0.0),  # USD
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # Cloud spend on one UTC day (days since the epoch), for the budget use the dashboard shows.
    sa.Column("day", sa.BigInteger, nullable=False, default=0),
    sa.Column("day_cloud_requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("day_cloud_cost", sa.Float, nullable=False, default=0.0),
)

# Telemetry over time, per device and model in fixed buckets (HISTORY_BUCKET_S): the counts of
# the reports that fell in a bucket added up, and the latency of the last of them. Kept for a
# bounded time (`run --history-hours`), pruned by the ingest.
HISTORY_BUCKET_S = 300
telemetry_history = sa.Table(
    "telemetry_history",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("bucket", sa.BigInteger, primary_key=True),  # unix seconds at its start
    sa.Column("requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("errors", sa.BigInteger, nullable=False, default=0),
    sa.Column("cloud_requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("p50_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("p95_ms", sa.Float, nullable=False, default=0.0),
    sa.Index("ix_telemetry_history_bucket", "bucket"),
)

# The same buckets added up over the fleet per model (what the models page charts): one row
# per model and bucket however many devices report. p95_weighted_ms is the sum of each
# device's p95 times its requests (divided by requests: the typical device's p95).
model_history = sa.Table(
    "model_history",
    metadata,
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("bucket", sa.BigInteger, primary_key=True),
    sa.Column("devices", sa.BigInteger, nullable=False, default=0),  # device-bucket rows
    sa.Column("requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("errors", sa.BigInteger, nullable=False, default=0),
    sa.Column("cloud_requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("p95_weighted_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("p95_max_ms", sa.Float, nullable=False, default=0.0),
    sa.Index("ix_model_history_bucket", "bucket"),
)

# The latest benchmark of each model variant (by file) on each device: `models bench-report`.
benchmarks = sa.Table(
    "benchmarks",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("hardware_class", sa.String(64), nullable=False),
    sa.Column("backend", sa.String(16), nullable=False),
    sa.Column("threads", sa.Integer, nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("p50_ms", sa.Float, nullable=False),
    sa.Column("p95_ms", sa.Float, nullable=False),
    sa.Column("throughput_per_s", sa.Float, nullable=False),
    sa.Column("runtime", sa.String(64), nullable=False, default=""),
    sa.Column("at", sa.BigInteger, nullable=False),
)

# Settings that are one JSON document each (the price table).
settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

fleet_state = sa.Table(
    "fleet_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
)

enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("uses_left", sa.Integer, nullable=False),
    sa.Column("labels", sa.Text, nullable=False, default="{}"),
    sa.Column("note", sa.String(255), nullable=False, default=""),
    sa.Column("created_by", sa.String(128), nullable=False, default=""),
)

device_models = sa.Table(
    "device_models",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(1024), nullable=False, default=""),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("active_version", sa.String(32), nullable=True),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("release_counter", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # One counter per release of a model, even with concurrent pushes on several replicas.
    sa.UniqueConstraint("model_name", "release_counter", name="uq_releases_counter"),
)

# One row per variant of a release (float32, int8, Edge TPU...), each with its own manifest.
models = sa.Table(
    "models",
    metadata,
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("variant", sa.String(32), primary_key=True),
    sa.Column("release_counter", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("edgetpu", sa.Boolean, nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("fallback_sha256", sa.String(64), nullable=True),
    sa.Column("sample_sha256", sa.String(64), nullable=True),
    sa.Column("compressed_sha256", sa.String(64), nullable=True),
    sa.Column("quantization", sa.String(16), nullable=False, default=""),
    sa.Column("requirements", sa.Text, nullable=False, default="{}"),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # An explicit rollback: a serialized EnvelopeSet, one root-signed manifest per variant.
    sa.Column("envelope", sa.LargeBinary, nullable=True),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("rollout_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("previous_version", sa.String(32), nullable=True),
    sa.Column("selector", sa.Text, nullable=False),
    sa.Column("waves", sa.Text, nullable=False),
    sa.Column("success_threshold", sa.Float, nullable=False),
    sa.Column("failure_threshold", sa.Float, nullable=False),
    sa.Column("max_concurrent", sa.Integer, nullable=False),
    sa.Column("device_timeout_s", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("current_wave", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(1024), nullable=False, default=""),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False, default=""),
    sa.Column("rollback_envelope", sa.LargeBinary, nullable=True),
    # Failures an admin accepted by resuming: the failure gate counts only newer ones.
    sa.Column("forgiven_failures", sa.Integer, nullable=False, default=0),
    # JSON of rollouts.plan.HealthGate: what the devices' telemetry must show after activation.
    sa.Column("health_gate", sa.Text, nullable=False, default="{}"),
)

rollout_devices = sa.Table(
    "rollout_devices",
    metadata,
    sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.rollout_id"), primary_key=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
    sa.Column("wave", sa.Integer, nullable=False),
    # waiting -> assigned -> installed | failed
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("assigned_at", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # The health gate: the device's p95 latency of the model before it was assigned, and what
    # its telemetry has said about the new version since it installed.
    sa.Column("baseline_p95_ms", sa.Float, nullable=True),
    sa.Column("health_requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("health_errors", sa.BigInteger, nullable=False, default=0),
    sa.Column("health_p95_ms", sa.Float, nullable=True),
    sa.Column("detail", sa.String(255), nullable=False, default=""),  # why it failed
    sa.Index("ix_rollout_devices_device", "device_id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("error", sa.String(1024), nullable=False, default=""),
)


@dataclass
class IngestBatch:
    """What one ingest batch writes: per device the telemetry position (epoch, highest seq,
    latest report or None, messages counted, gaps seen), retained states, and events."""

    telemetry: dict[str, tuple[str, int, dict[str, Any] | None, int, int]] = field(
        default_factory=dict
    )
    states: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    # (device, model, policy) -> [served, local runs, local ms, cloud requests, cloud USD]
    usage: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    # telemetry_history rows to add, and the bucket before which history is deleted (0: keep)
    history: list[dict[str, Any]] = field(default_factory=list)
    prune_history_before: int = 0


@dataclass(frozen=True)
class ModelRow:
    model_name: str
    version: str
    variant: str
    release_counter: int
    sha256: str
    size: int
    edgetpu: bool
    envelope: bytes
    created_at: int
    fallback_sha256: str | None = None
    sample_sha256: str | None = None
    compressed_sha256: str | None = None
    quantization: str = ""
    requirements: str = "{}"  # JSON: what the server derived from the file


@dataclass(frozen=True)
class DeviceModelRow:
    model_name: str
    version: str
    state: str
    detail: str
    updated_at: int
    active_version: str | None = None


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    name: str
    labels: dict[str, str]
    capabilities: dict[str, Any]
    enrolled_at: int
    last_seen: int
    last_telemetry: dict[str, Any] | None
    last_telemetry_at: int | None
    models: tuple[DeviceModelRow, ...]
    revoked_at: int | None = None
    online_state: str | None = None
    online_at: int | None = None
    telemetry_count: int = 0
    telemetry_gaps: int = 0


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


def _add_rows(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    combine: Mapping[str, Callable[[Any, Any], Any]] | None = None,
) -> None:
    """Upsert by adding, in one statement per batch (INSERT ... ON CONFLICT DO UPDATE, which
    SQLite and PostgreSQL both have): a row whose primary key exists gets each column's new
    value added, or for a column in ``combine``, ``combine[name](stored, new)``. Replicas
    writing the same key at once both succeed."""
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite  # noqa: PLC0415

    inserts: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
    if conn.dialect.name not in inserts:
        raise DataDirError(f"{conn.dialect.name} is not supported (SQLite or PostgreSQL)")
    statement = inserts[conn.dialect.name](table)
    key = [c.name for c in table.primary_key.columns]
    combine = combine or {}
    values = {
        name: combine.get(name, operator.add)(table.c[name], statement.excluded[name])
        for name in rows[0]
        if name not in key
    }
    conn.execute(statement.on_conflict_do_update(index_elements=key, set_=values), list(rows))


def _greater(stored: Any, new: Any) -> Any:
    return sa.case((stored > new, stored), else_=new)


def _add_usage(
    conn: sa.Connection, deltas: Mapping[tuple[str, str, str], list[float]], now: int
) -> None:
    """Add usage deltas; the per-day columns restart on a new UTC day."""
    rows = [
        {
            "device_id": d,
            "model_name": m,
            "policy": p,
            "served": int(v[0]),
            "local_runs": int(v[1]),
            "local_ms": float(v[2]),
            "cloud_requests": int(v[3]),
            "cloud_cost": float(v[4]),
            "updated_at": now,
            "day": now // 86400,
            "day_cloud_requests": int(v[3]),
            "day_cloud_cost": float(v[4]),
        }
        for (d, m, p), v in deltas.items()
    ]

    def same_day(stored: Any, new: Any) -> Any:
        # The stored day's total carries on only when the new row is of the same day.
        return sa.case((usage.c.day == sa.literal_column("excluded.day"), stored), else_=0) + new

    _add_rows(
        conn,
        usage,
        rows,
        combine={
            "updated_at": lambda _stored, new: new,
            "day": lambda _stored, new: new,
            "day_cloud_requests": same_day,
            "day_cloud_cost": same_day,
        },
    )


def _add_history(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add history buckets, per device and per model; the latency of a device's bucket two
    replicas both wrote is the worse one."""
    _add_rows(conn, telemetry_history, rows, combine={"p50_ms": _greater, "p95_ms": _greater})
    fleet: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        entry = fleet.setdefault(
            (r["model_name"], r["bucket"]),
            {"model_name": r["model_name"], "bucket": r["bucket"], "devices": 0, "requests": 0,
             "errors": 0, "cloud_requests": 0, "p95_weighted_ms": 0.0, "p95_max_ms": 0.0},
        )  # fmt: skip
        entry["devices"] += 1
        for column in ("requests", "errors", "cloud_requests"):
            entry[column] += r[column]
        entry["p95_weighted_ms"] += r["p95_ms"] * r["requests"]
        entry["p95_max_ms"] = max(entry["p95_max_ms"], r["p95_ms"])
    _add_rows(conn, model_history, list(fleet.values()), combine={"p95_max_ms": _greater})


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


def bump_generation(conn: sa.Connection) -> None:
    """Invalidate every server's cached check-in answers (in the caller's transaction)."""
    conn.execute(
        fleet_state.update()
        .where(fleet_state.c.id == 1)
        .values(generation=fleet_state.c.generation + 1)
    )


_MIGRATIONS = {
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
}


def token_digest(token: str) -> str:
    """What is stored instead of a device token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """The server's tables behind small methods."""

    def __init__(self, url: str) -> None:
        # As many pooled connections as the server has RPC threads: opening a connection per
        # call (the pool's overflow) costs more than most queries.
        self.engine: Engine = sa.create_engine(url, future=True, pool_size=20, max_overflow=10)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._generation: tuple[float, int] | None = None
        # A write here may have bumped the generation: read it again next time, so this
        # process never answers from a cache its own change made stale (other replicas notice
        # within the max age their callers allow).
        event.listen(self.engine, "commit", self._forget_generation)

    def _forget_generation(self, _conn: Any) -> None:
        self._generation = None

    def create_schema(self) -> None:
        """Create the tables (idempotent) and record the schema version.

        Raises:
            DataDirError: the database holds a schema of another version.
        """
        with self.engine.begin() as conn:
            fresh = not sa.inspect(conn).has_table("schema_meta")
        if fresh:
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                conn.execute(
                    schema_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                )
                conn.execute(fleet_state.insert().values(id=1, generation=1))
            return
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(schema_meta.c.value).where(schema_meta.c.key == "schema_version")
            ).first()
        version = int(row[0]) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise DataDirError(
                f"database schema version {version} is newer than this server's "
                f"{SCHEMA_VERSION}; upgrade the server"
            )
        while version < SCHEMA_VERSION:
            step = _MIGRATIONS.get(version)
            if step is None:
                raise DataDirError(f"no migration from database schema version {version}")
            with self.engine.begin() as conn:
                step(conn)
                version += 1
                conn.execute(
                    schema_meta.update()
                    .where(schema_meta.c.key == "schema_version")
                    .values(value=str(version))
                )

    def close(self) -> None:
        """Release connections."""
        self.engine.dispose()

    def generation(self, max_age_s: float = 0.0) -> int:
        """The fleet state generation (see ``fleet_state``), read at most ``max_age_s`` ago."""
        now = time.monotonic()
        cached = self._generation
        if cached is not None and now - cached[0] <= max_age_s:
            return cached[1]
        with self.engine.connect() as conn:
            value = int(
                conn.execute(
                    sa.select(fleet_state.c.generation).where(fleet_state.c.id == 1)
                ).scalar_one()
            )
        self._generation = (now, value)
        return value

    # devices -------------------------------------------------------------------------------

    def add_device(
        self,
        name: str,
        token: str,
        labels: Mapping[str, str],
        capabilities: Mapping[str, Any],
    ) -> str:
        """Register a device under a unique id derived from ``name``; return the id.

        Devices of the same name enrolling at once race for the same id; the loser takes the
        next free one (the primary key decides).
        """
        now = int(time.time())
        for _attempt in range(20):
            with self.engine.connect() as conn:
                taken = {
                    r[0]
                    for r in conn.execute(
                        sa.select(devices.c.device_id).where(devices.c.device_id.like(f"{name}%"))
                    )
                }
            device_id = name
            suffix = 2
            while device_id in taken:
                device_id = f"{name[:58]}-{suffix}"
                suffix += 1
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        devices.insert().values(
                            device_id=device_id,
                            name=name,
                            token_sha256=token_digest(token),
                            labels=json.dumps(dict(labels), sort_keys=True),
                            capabilities=json.dumps(dict(capabilities), sort_keys=True),
                            enrolled_at=now,
                            last_seen=now,
                        )
                    )
            except sa.exc.IntegrityError:
                continue
            return device_id
        raise AlreadyExistsError(f"could not find a free device id for {name!r}; retry")

    def set_certificate(self, device_id: str, serial: str, not_after: int) -> None:
        """Make this certificate the device's only valid one."""
        with self.engine.begin() as conn:
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(cert_serial=serial, cert_not_after=not_after)
            )
            bump_generation(conn)

    def device_certificate(self, device_id: str) -> tuple[str | None, bool] | None:
        """(current certificate serial, revoked) of a device, or None when unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(devices.c.cert_serial, devices.c.revoked_at).where(
                    devices.c.device_id == device_id
                )
            ).first()
        return None if row is None else (row[0], row[1] is not None)

    def delete_device(self, device_id: str) -> None:
        """Remove a device that never finished enrolling."""
        with self.engine.begin() as conn:
            conn.execute(devices.delete().where(devices.c.device_id == device_id))

    # enrollment tokens -----------------------------------------------------------------------

    def add_enrollment_token(
        self,
        token: str,
        *,
        ttl_s: int,
        uses: int,
        labels: Mapping[str, str],
        note: str,
        created_by: str,
    ) -> int:
        """Store a token (as its digest); return when it expires."""
        now = int(time.time())
        with self.engine.begin() as conn:
            conn.execute(
                enrollment_tokens.insert().values(
                    token_sha256=token_digest(token),
                    created_at=now,
                    expires_at=now + ttl_s,
                    uses_left=uses,
                    labels=json.dumps(dict(labels), sort_keys=True),
                    note=note[:255],
                    created_by=created_by[:128],
                )
            )
        return now + ttl_s

    def enrollment_token_labels(self, token: str) -> dict[str, str] | None:
        """The labels of a token that can still be used, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(enrollment_tokens.c.labels).where(
                    (enrollment_tokens.c.token_sha256 == token_digest(token))
                    & (enrollment_tokens.c.uses_left > 0)
                    & (enrollment_tokens.c.expires_at > int(time.time()))
                )
            ).first()
        return None if row is None else dict(json.loads(row[0]))

    def use_enrollment_token(self, token: str) -> bool:
        """Spend one use of a token, atomically; False when it is unknown, expired or used up."""
        with self.engine.begin() as conn:
            result = conn.execute(
                enrollment_tokens.update()
                .where(
                    (enrollment_tokens.c.token_sha256 == token_digest(token))
                    & (enrollment_tokens.c.uses_left > 0)
                    & (enrollment_tokens.c.expires_at > int(time.time()))
                )
                .values(uses_left=enrollment_tokens.c.uses_left - 1)
            )
        return bool(result.rowcount)

    def list_enrollment_tokens(self) -> list[dict[str, Any]]:
        """Every token (digests only), newest first."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(enrollment_tokens).order_by(enrollment_tokens.c.created_at.desc())
                )
                .mappings()
                .all()
            )
        return [dict(r) | {"labels": json.loads(r["labels"])} for r in rows]

    def revoke_enrollment_token(self, digest_prefix: str) -> int:
        """Use up every token whose digest starts with ``digest_prefix``; return how many.

        Raises:
            BadRequestError: the prefix is shorter than 8 characters.
        """
        if len(digest_prefix) < 8:
            raise BadRequestError("give at least 8 characters of the token id")
        with self.engine.begin() as conn:
            result = conn.execute(
                enrollment_tokens.update()
                .where(enrollment_tokens.c.token_sha256.like(f"{digest_prefix.lower()}%"))
                .values(uses_left=0)
            )
        return int(result.rowcount)

    def set_labels(
        self, device_id: str, set_labels: Mapping[str, str], remove: Sequence[str]
    ) -> None:
        """Change a device's labels.

        Raises:
            NotFoundError: no such device.
        """
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(devices.c.labels).where(devices.c.device_id == device_id)
            ).first()
            if row is None:
                raise NotFoundError(f"device {device_id!r} is not enrolled")
            labels = json.loads(row[0])
            labels.update(set_labels)
            for key in remove:
                labels.pop(key, None)
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(labels=json.dumps(labels, sort_keys=True))
            )
            bump_generation(conn)  # routing policies select devices by label

    def revoke(self, device_id: str) -> None:
        """Refuse a device's credentials from now on (idempotent).

        Raises:
            NotFoundError: no such device.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                devices.update()
                .where((devices.c.device_id == device_id) & devices.c.revoked_at.is_(None))
                .values(revoked_at=int(time.time()))
            )
            bump_generation(conn)
            if result.rowcount == 0:
                exists = conn.execute(
                    sa.select(devices.c.device_id).where(devices.c.device_id == device_id)
                ).first()
                if exists is None:
                    raise NotFoundError(f"device {device_id!r} is not enrolled")

    def get_device(self, device_id: str) -> DeviceRow:
        """One device with its models.

        Raises:
            NotFoundError: no such device.
        """
        for row in self.list_devices(device_id=device_id):
            return row
        raise NotFoundError(f"device {device_id!r} is not enrolled")

    def touch_device(self, device_id: str, capabilities: Mapping[str, Any] | None) -> None:
        """Record a check-in."""
        values: dict[str, Any] = {"last_seen": int(time.time())}
        if capabilities is not None:
            values["capabilities"] = json.dumps(dict(capabilities), sort_keys=True)
        with self.engine.begin() as conn:
            conn.execute(devices.update().where(devices.c.device_id == device_id).values(**values))

    def record_check_ins(self, seen: Mapping[str, tuple[int, str | None]]) -> None:
        """Write batched check-ins: device -> (last seen, new capabilities JSON or None)."""
        plain: dict[int, list[str]] = {}
        with_caps = []
        for device_id, (at, caps) in seen.items():
            if caps is None:
                plain.setdefault(at, []).append(device_id)
            else:
                with_caps.append({"d": device_id, "t": at, "c": caps})
        with self.engine.begin() as conn:
            for at, ids in plain.items():
                for start in range(0, len(ids), 500):
                    conn.execute(
                        devices.update()
                        .where(devices.c.device_id.in_(ids[start : start + 500]))
                        .values(last_seen=at)
                    )
            if with_caps:
                conn.execute(
                    devices.update()
                    .where(devices.c.device_id == sa.bindparam("d"))
                    .values(last_seen=sa.bindparam("t"), capabilities=sa.bindparam("c")),
                    with_caps,
                )

    def set_device_model(
        self, device_id: str, model_name: str, version: str, state: str, detail: str
    ) -> None:
        """Upsert what a device reports about one model."""
        now = int(time.time())
        with self.engine.begin() as conn:
            key = (device_models.c.device_id == device_id) & (
                device_models.c.model_name == model_name
            )
            updated = conn.execute(
                device_models.update()
                .where(key)
                .values(version=version, state=state, detail=detail[:1024], updated_at=now)
            )
            if updated.rowcount == 0:
                conn.execute(
                    device_models.insert().values(
                        device_id=device_id,
                        model_name=model_name,
                        version=version,
                        state=state,
                        detail=detail[:1024],
                        updated_at=now,
                    )
                )

    def set_active_version(self, device_id: str, model_name: str, version: str) -> None:
        """Record what a device serves (from a check-in), keeping its last update report."""
        now = int(time.time())
        with self.engine.begin() as conn:
            key = (device_models.c.device_id == device_id) & (
                device_models.c.model_name == model_name
            )
            updated = conn.execute(device_models.update().where(key).values(active_version=version))
            if updated.rowcount == 0:
                conn.execute(
                    device_models.insert().values(
                        device_id=device_id,
                        model_name=model_name,
                        version=version,
                        state="INSTALLED",
                        detail="serving",
                        updated_at=now,
                        active_version=version,
                    )
                )

    def telemetry_positions(self, device_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Device -> (epoch, highest sequence stored), for known devices."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    devices.c.device_id, devices.c.telemetry_epoch, devices.c.last_telemetry_seq
                ).where(devices.c.device_id.in_(list(device_ids)))
            ).all()
        return {str(d): (e or "", int(q or 0)) for d, e, q in rows}

    def record_mqtt_batch(self, batch: IngestBatch) -> bool:
        """Write one batch of ingested MQTT messages in one transaction. History is written in
        a savepoint of its own: when it cannot be stored the rest still is (False)."""
        now = int(time.time())
        with_report, counts_only = [], []
        for device_id, (epoch, seq, report, count, gaps) in batch.telemetry.items():
            row = {"d": device_id, "e": epoch, "s": seq, "n": count, "g": gaps}
            if report is None:
                counts_only.append(row)
            else:
                with_report.append(row | {"r": json.dumps(report, sort_keys=True), "t": now})
        counted = {
            "telemetry_epoch": sa.bindparam("e"),
            "last_telemetry_seq": sa.bindparam("s"),
            "telemetry_count": devices.c.telemetry_count + sa.bindparam("n"),
            "telemetry_gaps": devices.c.telemetry_gaps + sa.bindparam("g"),
        }
        update = devices.update().where(devices.c.device_id == sa.bindparam("d"))
        with self.engine.begin() as conn:
            if with_report:  # one statement, many rows
                conn.execute(
                    update.values(
                        last_telemetry=sa.bindparam("r"),
                        last_telemetry_at=sa.bindparam("t"),
                        **counted,
                    ),
                    with_report,
                )
            if counts_only:
                conn.execute(update.values(**counted), counts_only)
            for device_id, state in batch.states.items():
                conn.execute(
                    devices.update()
                    .where(devices.c.device_id == device_id)
                    .values(online_state=state, online_at=now)
                )
            if batch.events:
                conn.execute(device_events.insert(), batch.events)
            if batch.usage:
                _add_usage(conn, batch.usage, now)
            history_stored = True
            if batch.history:
                try:
                    with conn.begin_nested():
                        _add_history(conn, batch.history)
                except sa.exc.SQLAlchemyError:
                    log.exception("cannot store %d telemetry history row(s)", len(batch.history))
                    history_stored = False
            if batch.prune_history_before:
                for table in (telemetry_history, model_history):
                    conn.execute(table.delete().where(table.c.bucket < batch.prune_history_before))
        return history_stored

    def device_events(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A device's update events from MQTT, newest first."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(device_events)
                    .where(device_events.c.device_id == device_id)
                    .order_by(device_events.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def record_telemetry(self, device_id: str, seq: int, report: Mapping[str, Any]) -> bool:
        """Keep a device's latest telemetry; False when the device is unknown."""
        with self.engine.begin() as conn:
            result = conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(
                    last_telemetry=json.dumps(dict(report), sort_keys=True),
                    last_telemetry_at=int(time.time()),
                    last_telemetry_seq=seq,
                )
            )
        return bool(result.rowcount)

    def list_devices(self, device_id: str | None = None) -> list[DeviceRow]:
        """Every device (or the one named) with its per-model state, by id."""
        query = sa.select(devices).order_by(devices.c.device_id)
        if device_id is not None:
            query = query.where(devices.c.device_id == device_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            states = (
                conn.execute(sa.select(device_models).order_by(device_models.c.model_name))
                .mappings()
                .all()
            )
        by_device: dict[str, list[DeviceModelRow]] = {}
        for s in states:
            by_device.setdefault(s["device_id"], []).append(
                DeviceModelRow(
                    s["model_name"],
                    s["version"],
                    s["state"],
                    s["detail"],
                    s["updated_at"],
                    s["active_version"],
                )
            )
        return [
            DeviceRow(
                device_id=r["device_id"],
                name=r["name"],
                labels=json.loads(r["labels"]),
                capabilities=json.loads(r["capabilities"]),
                enrolled_at=r["enrolled_at"],
                last_seen=r["last_seen"],
                last_telemetry=json.loads(r["last_telemetry"]) if r["last_telemetry"] else None,
                last_telemetry_at=r["last_telemetry_at"],
                models=tuple(by_device.get(r["device_id"], ())),
                revoked_at=r["revoked_at"],
                online_state=r["online_state"],
                online_at=r["online_at"],
                telemetry_count=int(r["telemetry_count"] or 0),
                telemetry_gaps=int(r["telemetry_gaps"] or 0),
            )
            for r in rows
        ]

    # models --------------------------------------------------------------------------------

    def next_release_counter(self, model_name: str) -> int:
        """One more than the highest release counter of ``model_name`` (1 for a new model)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(releases.c.release_counter)).where(
                    releases.c.model_name == model_name
                )
            ).scalar()
        return int(value or 0) + 1

    def add_release(self, rows: Sequence[ModelRow]) -> None:
        """Record a pushed release with all its variants, in one transaction.

        Raises:
            AlreadyExistsError: that name and version exist already (versions are immutable),
                or another push took the same release counter (retry the push).
        """
        first = rows[0]
        try:
            with self.engine.begin() as conn:
                if self._release_exists(conn, first.model_name, first.version):
                    raise AlreadyExistsError(
                        f"model {first.model_name} version {first.version} exists already; "
                        "versions are immutable, push a new version"
                    )
                conn.execute(
                    releases.insert().values(
                        model_name=first.model_name,
                        version=first.version,
                        release_counter=first.release_counter,
                        created_at=first.created_at,
                    )
                )
                conn.execute(models.insert(), [row.__dict__ for row in rows])
        except sa.exc.IntegrityError as exc:
            raise AlreadyExistsError(
                f"release {first.release_counter} of {first.model_name} was taken by a "
                "concurrent push; push again"
            ) from exc

    def add_model(self, row: ModelRow) -> None:
        """Record a release with one variant (see :meth:`add_release`)."""
        self.add_release([row])

    @staticmethod
    def _release_exists(conn: sa.Connection, model_name: str, version: str) -> bool:
        return (
            conn.execute(
                sa.select(releases.c.version).where(
                    (releases.c.model_name == model_name) & (releases.c.version == version)
                )
            ).first()
            is not None
        )

    def model_exists(self, model_name: str, version: str) -> bool:
        """True when that name and version were pushed already."""
        with self.engine.connect() as conn:
            return self._release_exists(conn, model_name, version)

    def set_envelope(self, model_name: str, version: str, variant: str, envelope: bytes) -> None:
        """Replace a variant's signed manifest (offline signatures attached)."""
        with self.engine.begin() as conn:
            conn.execute(
                models.update()
                .where(
                    (models.c.model_name == model_name)
                    & (models.c.version == version)
                    & (models.c.variant == variant)
                )
                .values(envelope=envelope)
            )
            bump_generation(conn)

    def get_variants(self, model_name: str, version: str) -> list[ModelRow]:
        """Every variant of a release, by variant name.

        Raises:
            NotFoundError: no such version.
        """
        rows = self.variants_of([(model_name, version)]).get((model_name, version))
        if not rows:
            raise NotFoundError(f"model {model_name} version {version} does not exist")
        return rows

    def get_model(self, model_name: str, version: str, variant: str | None = None) -> ModelRow:
        """One variant of a release (the first by name when ``variant`` is None).

        Raises:
            NotFoundError: no such version or variant.
        """
        rows = self.get_variants(model_name, version)
        if variant is None:
            return rows[0]
        for row in rows:
            if row.variant == variant:
                return row
        raise NotFoundError(f"model {model_name} version {version} has no variant {variant!r}")

    def variants_of(
        self, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[ModelRow]]:
        """The variants of several releases, by (model, version)."""
        if not pairs:
            return {}
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(models)
                    .where(sa.tuple_(models.c.model_name, models.c.version).in_(list(pairs)))
                    .order_by(models.c.model_name, models.c.version, models.c.variant)
                )
                .mappings()
                .all()
            )
        result: dict[tuple[str, str], list[ModelRow]] = {}
        for r in rows:
            result.setdefault((r["model_name"], r["version"]), []).append(ModelRow(**r))
        return result

    def list_models(self) -> list[ModelRow]:
        """Every variant of every release, by name, release, then variant."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(models).order_by(
                        models.c.model_name, models.c.release_counter, models.c.variant
                    )
                )
                .mappings()
                .all()
            )
        return [ModelRow(**r) for r in rows]

    def newest_version(self, model_name: str) -> str | None:
        """The version with the highest release counter, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(releases.c.version)
                .where(releases.c.model_name == model_name)
                .order_by(releases.c.release_counter.desc())
                .limit(1)
            ).first()
        return None if row is None else str(row[0])

    def model_by_sha(self, sha256: str) -> ModelRow | None:
        """A model variant whose artifact, CPU fallback, smoke sample or compressed copy has this
        hash, if any."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(models)
                    .where(
                        (models.c.sha256 == sha256)
                        | (models.c.fallback_sha256 == sha256)
                        | (models.c.sample_sha256 == sha256)
                        | (models.c.compressed_sha256 == sha256)
                    )
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else ModelRow(**row)

    def deploy(self, model_name: str, version: str, envelope: bytes | None = None) -> ModelRow:
        """Make a version the fleet-wide desired version of its model; ``envelope`` (a
        serialized EnvelopeSet) replaces its manifests for this deployment (an explicit
        rollback).

        Raises:
            NotFoundError: no such version.
        """
        row = self.get_model(model_name, version)
        now = int(time.time())
        values = {"version": version, "updated_at": now, "envelope": envelope}
        with self.engine.begin() as conn:
            updated = conn.execute(
                deployments.update().where(deployments.c.model_name == model_name).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(deployments.insert().values(model_name=model_name, **values))
            bump_generation(conn)
        return row

    def deployed(self) -> dict[str, str]:
        """Model name -> deployed version."""
        return {name: version for name, (version, _) in self.deployments().items()}

    def deployments(self) -> dict[str, tuple[str, bytes | None]]:
        """Model name -> (fleet-wide version, its explicit-rollback EnvelopeSet or None)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    deployments.c.model_name, deployments.c.version, deployments.c.envelope
                ).order_by(deployments.c.model_name)
            ).all()
        return {str(r[0]): (str(r[1]), bytes(r[2]) if r[2] else None) for r in rows}
