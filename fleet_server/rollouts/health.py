"""The telemetry health gate's store: which devices' telemetry a rollout is watching, and
what that telemetry adds up to (a device that breaks its rollout's gate fails in its wave).

The judgement itself is pure (:func:`fleet_server.rollouts.plan.judge_health`); the ingest
(:mod:`fleet_server.telemetry.ingest`) feeds the samples.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.rollouts.plan import HealthGate, judge_health
from fleet_server.rollouts.states import GATED, DeviceState
from fleet_server.rollouts.store import BATCH, FailureRow
from fleet_server.storage.db import Database
from fleet_server.storage.schema import rollout_devices, rollouts

__all__ = ["HealthSample", "HealthStore", "Watched"]


@dataclass(frozen=True)
class Watched:
    """A device whose telemetry about a model version feeds a rollout's health gate."""

    rollout_id: int
    device_id: str
    model_name: str
    version: str
    until: int  # unix time the health window ends


@dataclass(frozen=True)
class HealthSample:
    """What one telemetry report said about a watched device's new version."""

    rollout_id: int
    device_id: str
    requests: int  # since the previous report
    errors: int
    p95_ms: float


class HealthStore:
    """Queries over the devices a rollout's health gate watches."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def watched(self, device_ids: Collection[str], now: int | None = None) -> list[Watched]:
        """Which of these devices' telemetry feeds a health gate, and until when: devices
        told to update (or updated) by a running, paused or completed rollout with a gate,
        within the gate's window after installing."""
        now = int(time.time()) if now is None else now
        c = rollout_devices.c
        result: list[Watched] = []
        ids = sorted(device_ids)
        with self._engine.connect() as conn:
            for start in range(0, len(ids), BATCH):
                rows = conn.execute(
                    sa.select(
                        c.rollout_id,
                        c.device_id,
                        c.state,
                        c.updated_at,
                        rollouts.c.model_name,
                        rollouts.c.version,
                        rollouts.c.health_gate,
                    )
                    .join(rollouts, rollouts.c.rollout_id == c.rollout_id)
                    .where(
                        c.device_id.in_(ids[start : start + BATCH])
                        & c.state.in_((DeviceState.ASSIGNED, DeviceState.INSTALLED))
                        & rollouts.c.state.in_(sorted(GATED))
                    )
                ).all()
                for rollout_id, device_id, state, since, model, version, gate_json in rows:
                    gate = HealthGate.from_json(gate_json)
                    # An assigned device may report the new version just before it says it
                    # installed it: watch it from now.
                    until = (now if state == DeviceState.ASSIGNED else int(since)) + gate.window_s
                    if not gate.disabled and until >= now:
                        result.append(
                            Watched(int(rollout_id), str(device_id), model, version, until)
                        )
        return result

    def record_health(self, samples: Sequence[HealthSample]) -> list[FailureRow]:
        """Add telemetry to the health gate's counts and fail the devices that break it.

        Returns the devices failed now.
        """
        if not samples:
            return []
        merged: dict[tuple[int, str], list[float]] = {}
        for sample in samples:
            entry = merged.setdefault((sample.rollout_id, sample.device_id), [0, 0, 0.0])
            entry[0] += sample.requests
            entry[1] += sample.errors
            entry[2] = sample.p95_ms or entry[2]
        c = rollout_devices.c
        now = int(time.time())
        failed: list[FailureRow] = []
        with self._engine.begin() as conn:
            conn.execute(
                rollout_devices.update()
                .where(
                    (c.rollout_id == sa.bindparam("r"))
                    & (c.device_id == sa.bindparam("d"))
                    & (c.state == DeviceState.INSTALLED)
                    # (no IN list: executemany cannot expand one)
                    & c.rollout_id.in_(
                        sa.select(rollouts.c.rollout_id).where(
                            sa.or_(*(rollouts.c.state == state for state in sorted(GATED)))
                        )
                    )
                )
                .values(
                    health_requests=c.health_requests + sa.bindparam("n"),
                    health_errors=c.health_errors + sa.bindparam("e"),
                    health_p95_ms=sa.case(
                        (sa.bindparam("p", type_=sa.Float) > 0, sa.bindparam("p", type_=sa.Float)),
                        else_=c.health_p95_ms,
                    ),
                ),
                [
                    {"r": r, "d": d, "n": int(n), "e": int(e), "p": float(p)}
                    for (r, d), (n, e, p) in merged.items()
                ],
            )
            for rollout_id in {r for r, _ in merged}:
                devices_here = [d for r, d in merged if r == rollout_id]
                gate_json = conn.execute(
                    sa.select(rollouts.c.health_gate).where(rollouts.c.rollout_id == rollout_id)
                ).scalar_one()
                gate = HealthGate.from_json(gate_json)
                rows = conn.execute(
                    sa.select(
                        c.device_id,
                        c.wave,
                        c.health_requests,
                        c.health_errors,
                        c.health_p95_ms,
                        c.baseline_p95_ms,
                    ).where(
                        (c.rollout_id == rollout_id)
                        & c.device_id.in_(devices_here)
                        & (c.state == DeviceState.INSTALLED)
                    )
                ).all()
                for device_id, wave, requests, errors, p95, baseline in rows:
                    reason = judge_health(
                        gate, int(requests), int(errors), float(p95 or 0.0), baseline
                    )
                    if reason:
                        failed.append(FailureRow(str(device_id), int(wave), reason))
                        conn.execute(
                            rollout_devices.update()
                            .where((c.rollout_id == rollout_id) & (c.device_id == device_id))
                            .values(state=DeviceState.FAILED, detail=reason[:255], updated_at=now)
                        )
        return failed
