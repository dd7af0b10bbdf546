"""The server's tables (SQLAlchemy Core) and the schema version they make.

Each table belongs to one concern, which owns its queries: devices, enrollment tokens,
enrollments, device_models, refusal_clears and device_logs to ``registry`` (which also deletes
a device's rows everywhere when it deletes a ghost device); releases, models, deployments,
benchmarks, deliveries and downloads to ``catalog``; rollouts, rollout_devices and
maintenance_windows to ``rollouts``; audit_log to ``audit``; routing_policies, settings and usage
to ``routing`` (usage is written by ``telemetry``); device_events and the history tables to
``telemetry``; admins to ``admins``; webhooks, webhook_outbox and webhook_attempts to
``webhooks``. ``fleet_state`` is storage's own (the generation)."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "SCHEMA_VERSION",
    "admins",
    "audit_log",
    "benchmarks",
    "deliveries",
    "deployments",
    "device_events",
    "device_logs",
    "device_models",
    "devices",
    "downloads",
    "enrollment_tokens",
    "enrollments",
    "fleet_state",
    "maintenance_windows",
    "metadata",
    "model_history",
    "models",
    "refusal_clears",
    "releases",
    "rollout_devices",
    "rollouts",
    "routing_policies",
    "schema_meta",
    "settings",
    "telemetry_history",
    "usage",
    "webhook_attempts",
    "webhook_outbox",
    "webhooks",
]

SCHEMA_VERSION = 30

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
    # What the server has stored of the current epoch's sequence (JSON; see
    # fleet_server/telemetry/sequence.py): highest, missing ranges, stored/dropped/lost counts.
    sa.Column("telemetry_ledger", sa.Text, nullable=True),
    sa.Column("online_state", sa.String(16), nullable=True),
    sa.Column("online_at", sa.BigInteger, nullable=True),
    # The releases the device refuses, as its last check-in reported them: JSON
    # [[model name, sha256], ...]; NULL = its agent does not report them.
    sa.Column("refusals", sa.Text, nullable=True),
    # When it first checked in; NULL: enrolled and never heard of since (a ghost once it is
    # older than --ghost-device-after).
    sa.Column("first_checkin_at", sa.BigInteger, nullable=True),
)

# Refusals an operator cleared ('edgefleet devices clear-refusal') that the device has not
# confirmed yet: sent in its check-in answers until a check-in reports no refusal they cover.
refusal_clears = sa.Table(
    "refusal_clears",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),  # "" = every release of the model
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_at", sa.BigInteger, nullable=False, index=True),
)

# A device's recent log ('edgefleet devices log'): the latest request, pending until the device
# uploads (its check-in answers carry it), and the latest upload, which the next one replaces: a
# serialized LogUpload of at most protos.logs.MAX_UPLOAD_BYTES, its text escaped.
device_logs = sa.Table(
    "device_logs",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_at", sa.BigInteger, nullable=False),
    sa.Column("lines", sa.Integer, nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("received_for", sa.String(32), nullable=True),  # the request the upload answered
    sa.Column("received_at", sa.BigInteger, nullable=True),
    sa.Column("upload", sa.LargeBinary, nullable=True),
    sa.Column("truncated", sa.Boolean, nullable=False, default=False),
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
    # When the server stored it (events are pruned by it; "at" is the device's clock).
    sa.Column("stored_at", sa.BigInteger, nullable=False, default=0, index=True),
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

# Which device the server streamed which artifact to, whole (the last chunk sent): only those
# devices' benchmarks of that file count for their hardware class.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("at", sa.BigInteger, nullable=False),
)

# How far the server has streamed each artifact to each device: ``reached`` is the end of the
# bytes sent without a gap from byte 0 (a resumed stream that starts at or before it extends
# it), ``total`` the artifact's size. What `edgefleet devices show` reports as a download's
# progress, and what makes a delivery (``reached == total``) when a download was resumed.
downloads = sa.Table(
    "downloads",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("artifact", sa.String(64), primary_key=True),
    sa.Column("reached", sa.BigInteger, nullable=False),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
)

# Named admins (fleet_server/admins): one token each, kept as its SHA-256.
admins = sa.Table(
    "admins",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.Integer, nullable=False),  # fleet_server.admins.roles.Role
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("revoked_at", sa.BigInteger),
    sa.Column("last_used_at", sa.BigInteger),
    # The client certificate from the fleet CA (`admins cert`), as an alternative to the token
    # on the mTLS port: its serial (hex) and expiry. One at a time; a new one replaces it.
    sa.Column("cert_serial", sa.String(40)),
    sa.Column("cert_not_after", sa.BigInteger),
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

# Certificates of devices that no longer exist (ghosts, deleted): kept in the CRL, so a
# certificate issued to a thief who enrolled with a seen token and vanished is refused by
# mosquitto (which knows devices only by their certificate) even when its id is reused.
retired_certificates = sa.Table(
    "retired_certificates",
    metadata,
    sa.Column("cert_serial", sa.String(40), primary_key=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("retired_at", sa.BigInteger, nullable=False),
)

# Each enrollment's answer for 10 minutes (registry.store.REPEAT_WINDOW_S): the same token
# with the same public key (an agent killed before it saved its identity, asking again) gets
# the same device and certificate instead of a refusal.
enrollments = sa.Table(
    "enrollments",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),  # "bootstrap": the data dir's
    sa.Column("key_sha256", sa.String(64), primary_key=True),  # of the DER SubjectPublicKeyInfo
    sa.Column(
        "device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False, index=True
    ),
    sa.Column("cert_serial", sa.String(40), nullable=False),
    sa.Column("certificate", sa.Text, nullable=False),  # PEM
    sa.Column("at", sa.BigInteger, nullable=False),
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
    # The (epoch, sequence number) of the update event that set the state above; an event
    # arriving late (a lower number of the same epoch) does not overwrite a newer one. NULL:
    # set by a report without a number (an older agent).
    sa.Column("event_epoch", sa.String(32), nullable=True),
    sa.Column("event_seq", sa.BigInteger, nullable=True),
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
    # When it starts (unix seconds; NULL: when created) and when it did (NULL: not yet).
    sa.Column("start_at", sa.BigInteger, nullable=True),
    sa.Column("started_at", sa.BigInteger, nullable=True),
)

# Maintenance windows (fleet_server/rollouts/windows.py): the devices matching the selector are
# told to update by a rollout only inside one of their windows, in their own time zone.
maintenance_windows = sa.Table(
    "maintenance_windows",
    metadata,
    sa.Column("window_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("selector", sa.Text, nullable=False),  # JSON labels
    sa.Column("days", sa.Integer, nullable=False),  # bit d set: opens on day d (0 = Monday)
    sa.Column("start_minute", sa.Integer, nullable=False),  # after local midnight, 0..1439
    sa.Column("end_minute", sa.Integer, nullable=False),  # 1..1440; <= start: the next day
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
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

# Where notifications go (docs/notifications.md). The secret signs each delivery (HMAC), so the
# server keeps it; it is shown once, when the webhook is added, and never listed.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("webhook_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("events", sa.Text, nullable=False, default="[]"),  # JSON types; [] = every one
    sa.Column("allow_http", sa.Boolean, nullable=False, default=False),
    sa.Column("ca_pem", sa.Text, nullable=True),  # trusted for this receiver (else the system's)
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("dropped", sa.BigInteger, nullable=False, default=0),  # over the outbox's cap
)

# One row per event and webhook, recorded in the transaction of what happened (a rollout's
# step, a device's report): pending until delivered, given up or dropped, then kept as the
# delivery log's summary for 7 days. (event_id, webhook_id) is unique: an event that several
# replicas notice (a device offline) is delivered once per webhook.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("webhook_id", sa.Integer, nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # the payload's "data" (JSON)
    sa.Column("created_at", sa.BigInteger, nullable=False),  # the event's time
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, failed, dropped
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_at", sa.Float, nullable=False),  # a pending row's next attempt
    # Which server process sends it now, until when (a process that died loses it then).
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("event_id", "webhook_id", name="uq_webhook_outbox_event"),
    sa.Index("ix_webhook_outbox_due", "state", "next_at"),
    sa.Index("ix_webhook_outbox_webhook", "webhook_id", "state"),
)

# The delivery log: every attempt, its HTTP status or error; kept 7 days.
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("outbox_id", sa.Integer, nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    sa.Column("status", sa.Integer, nullable=False, default=0),  # HTTP status; 0: none
    sa.Column("error", sa.String(255), nullable=False, default=""),
    sa.Column("duration_ms", sa.Integer, nullable=False, default=0),
)
