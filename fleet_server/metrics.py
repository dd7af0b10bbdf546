"""Fleet-level Prometheus metrics of the server (``run --metrics-listen HOST:PORT``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import sqlalchemy as sa

from fleet_server.registry.presence import presence_sql
from fleet_server.storage.schema import devices, rollouts

if TYPE_CHECKING:
    from fleet_server.context import ServerContext
    from fleet_server.telemetry.ingest import TelemetryIngest

__all__ = ["render"]


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def render(ctx: ServerContext, ingest: TelemetryIngest | None) -> str:
    """Devices by presence, rollouts by state, telemetry and check-in counters (this
    process's; worker processes keep their own check-in counters)."""
    out = [
        "# HELP edgefleet_devices Enrolled, unrevoked devices by presence (docs/mqtt.md).",
        "# TYPE edgefleet_devices gauge",
    ]
    with ctx.db.engine.connect() as conn:
        word = presence_sql(time.time()).label("presence")
        by_state = conn.execute(
            sa.select(word, sa.func.count()).where(devices.c.revoked_at.is_(None)).group_by(word)
        ).all()
        revoked = conn.execute(
            sa.select(sa.func.count()).where(devices.c.revoked_at.is_not(None))
        ).scalar_one()
        rollout_states = conn.execute(
            sa.select(rollouts.c.state, sa.func.count()).group_by(rollouts.c.state)
        ).all()
    counts = {"online": 0, "offline": 0, "stopped": 0}
    for state, count in by_state:
        counts[str(state)] = counts.get(str(state), 0) + int(count)
    out += [_line("edgefleet_devices", v, {"state": k}) for k, v in counts.items()]
    out += [
        "# HELP edgefleet_devices_revoked Revoked devices.",
        "# TYPE edgefleet_devices_revoked gauge",
        _line("edgefleet_devices_revoked", float(revoked)),
        "# HELP edgefleet_rollouts Rollouts by state.",
        "# TYPE edgefleet_rollouts gauge",
    ]
    out += [_line("edgefleet_rollouts", float(n), {"state": str(s)}) for s, n in rollout_states]
    out += [
        "# HELP edgefleet_checkin_answers_total Check-in answers, from the cache or computed.",
        "# TYPE edgefleet_checkin_answers_total counter",
        _line("edgefleet_checkin_answers_total", ctx.answers.hits, {"source": "cache"}),
        _line("edgefleet_checkin_answers_total", ctx.answers.misses, {"source": "database"}),
    ]
    if ingest is not None:
        out += [
            "# HELP edgefleet_mqtt_connected 1 while the ingest's broker connection is up.",
            "# TYPE edgefleet_mqtt_connected gauge",
            _line("edgefleet_mqtt_connected", int(ingest.connected)),
            "# HELP edgefleet_mqtt_messages_total MQTT messages from devices, by outcome.",
            "# TYPE edgefleet_mqtt_messages_total counter",
            _line("edgefleet_mqtt_messages_total", ingest.accepted, {"outcome": "accepted"}),
            _line("edgefleet_mqtt_messages_total", ingest.rejected, {"outcome": "rejected"}),
            _line("edgefleet_mqtt_messages_total", ingest.duplicates, {"outcome": "duplicate"}),
            _line("edgefleet_mqtt_messages_total", ingest.dropped, {"outcome": "dropped"}),
            _line("edgefleet_mqtt_messages_total", ingest.filled, {"outcome": "filled"}),
            _line("edgefleet_mqtt_messages_total", ingest.deferred, {"outcome": "deferred"}),
            *(
                _line("edgefleet_mqtt_messages_total", n, {"outcome": f"refused_{reason}"})
                for reason, n in sorted(ingest.refused.items())
            ),
            "# HELP edgefleet_mqtt_lost_total Device messages given up as lost (see docs/mqtt.md).",
            "# TYPE edgefleet_mqtt_lost_total counter",
            _line("edgefleet_mqtt_lost_total", ingest.gaps),
            "# HELP edgefleet_mqtt_write_failures_total Ingest writes the database refused.",
            "# TYPE edgefleet_mqtt_write_failures_total counter",
            _line("edgefleet_mqtt_write_failures_total", ingest.write_failures),
            "# HELP edgefleet_rollout_unhealthy_total Devices failed by a rollout's health gate.",
            "# TYPE edgefleet_rollout_unhealthy_total counter",
            _line("edgefleet_rollout_unhealthy_total", ingest.unhealthy),
        ]
    hooks = ctx.webhooks.summaries()
    if hooks:
        out += [
            "# HELP edgefleet_webhook_deliveries Webhook deliveries by state (finished ones "
            "of the last 7 days; docs/notifications.md).",
            "# TYPE edgefleet_webhook_deliveries gauge",
        ]
        for h in hooks:
            name = h.webhook.name
            for state, n in (("pending", h.pending), ("delivered", h.delivered),
                             ("failed", h.failed)):  # fmt: skip
                out.append(_line("edgefleet_webhook_deliveries", n, {"webhook": name,
                                                                     "state": state}))  # fmt: skip
        out += [
            "# HELP edgefleet_webhook_dropped_total Webhook deliveries dropped unsent: too many "
            "were pending.",
            "# TYPE edgefleet_webhook_dropped_total counter",
            *(_line("edgefleet_webhook_dropped_total", h.webhook.dropped,
                    {"webhook": h.webhook.name}) for h in hooks),
        ]  # fmt: skip
    spill = ingest.spill if ingest is not None else None
    if spill is not None:
        out += [
            "# HELP edgefleet_ingest_spill_messages Messages in the spill, not stored yet.",
            "# TYPE edgefleet_ingest_spill_messages gauge",
            _line("edgefleet_ingest_spill_messages", spill.messages),
            "# HELP edgefleet_ingest_spill_bytes Bytes of topics and payloads in the spill.",
            "# TYPE edgefleet_ingest_spill_bytes gauge",
            _line("edgefleet_ingest_spill_bytes", spill.bytes),
            "# HELP edgefleet_ingest_spilled_total Messages committed to the spill.",
            "# TYPE edgefleet_ingest_spilled_total counter",
            _line("edgefleet_ingest_spilled_total", spill.spilled),
            "# HELP edgefleet_ingest_spill_drained_total Messages stored from the spill.",
            "# TYPE edgefleet_ingest_spill_drained_total counter",
            _line("edgefleet_ingest_spill_drained_total", spill.drained),
            "# HELP edgefleet_ingest_spill_refused_total Messages the spill refused (they wait "
            "in memory, unacknowledged), by reason.",
            "# TYPE edgefleet_ingest_spill_refused_total counter",
            *(
                _line("edgefleet_ingest_spill_refused_total", n, {"reason": reason})
                for reason, n in sorted(spill.refused.items())
            ),
            "# HELP edgefleet_ingest_spill_quarantined_total Damaged spill files moved aside.",
            "# TYPE edgefleet_ingest_spill_quarantined_total counter",
            _line("edgefleet_ingest_spill_quarantined_total", spill.quarantined),
        ]
    return "\n".join(out) + "\n"
