"""A device's update outcome, recorded once whichever way it arrives.

An agent reports each update step as a numbered event of its message sequence, over MQTT and
over the device API until the server has stored it (``protos/device.proto``, ``Deliver``); an
older agent reports it once, unnumbered (``ReportStatus``). Both land here, in the caller's
transaction: the device's model state (unless a later event of the same epoch already set it:
copies arrive late and out of order) and, for an install or a failure, the live rollouts of that
version, whose failure gate then counts it. A refusal or a rollback is told to operators
(``update.refused``, docs/notifications.md) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.rollouts.states import TICKING, DeviceState
from fleet_server.storage.schema import (
    device_models,
    devices,
    releases,
    rollout_devices,
    rollouts,
)
from fleet_server.webhooks.events import Event, EventType, event_id
from fleet_server.webhooks.store import record
from protos import device_pb2 as pb

__all__ = ["Outcome", "apply_update", "record_outcome"]

_ROLLOUT: dict[int, DeviceState] = {
    pb.INSTALLED: DeviceState.INSTALLED,
    pb.FAILED: DeviceState.FAILED,
    pb.ROLLED_BACK: DeviceState.FAILED,
}


@dataclass(frozen=True)
class Outcome:
    """One update step of one device, as reported."""

    device_id: str
    model_name: str
    version: str
    state: int  # a protos UpdateState
    detail: str = ""  # as stored (storage.db.stored_text): both ways in escape it
    epoch: str | None = None  # with seq: the event's place in the device's sequence
    seq: int | None = None


def record_outcome(  # noqa: PLR0917 - one outcome's fields, as RolloutStore.report takes them
    conn: sa.Connection,
    device_id: str,
    model_name: str,
    version: str,
    outcome: DeviceState,
    detail: str,
    now: int,
) -> None:
    """Record an install or a failure in the live rollouts of that model and version; a
    failure after an install (a health rollback) counts as a failure, and an install starts the
    health gate's count afresh."""
    if outcome not in (DeviceState.INSTALLED, DeviceState.FAILED):
        raise ValueError(f"a device reports installed or failed, not {outcome}")
    d = DeviceState
    before = (d.ASSIGNED, d.FAILED) if outcome == d.INSTALLED else (d.ASSIGNED, d.INSTALLED)
    conn.execute(
        rollout_devices.update()
        .where(
            (rollout_devices.c.device_id == device_id)
            & rollout_devices.c.state.in_(before)
            & rollout_devices.c.rollout_id.in_(
                sa.select(rollouts.c.rollout_id).where(
                    (rollouts.c.model_name == model_name)
                    & (rollouts.c.version == version)
                    & rollouts.c.state.in_(sorted(TICKING))
                )
            )
        )
        .values(
            state=outcome,
            updated_at=now,
            detail=detail[:255],
            health_requests=0,
            health_errors=0,
            health_p95_ms=None,
        )
    )


def apply_update(conn: sa.Connection, outcome: Outcome, now: int) -> bool:
    """Apply one update step; True when it may have changed a rollout (wake the controller).
    A numbered step older than the one that set the device's state is only history."""
    key = (device_models.c.device_id == outcome.device_id) & (
        device_models.c.model_name == outcome.model_name
    )
    row = conn.execute(
        sa.select(device_models.c.event_epoch, device_models.c.event_seq).where(key)
    ).first()
    if (
        row is not None
        and outcome.seq is not None
        and row.event_epoch == outcome.epoch
        and row.event_seq is not None
        and int(row.event_seq) > outcome.seq
    ):
        return False
    state = pb.UpdateState.Name(outcome.state)
    values = {
        "version": outcome.version,
        "state": state,
        "detail": outcome.detail[:1024],
        "updated_at": now,
        "event_epoch": outcome.epoch,
        "event_seq": outcome.seq,
    }
    if outcome.state == pb.INSTALLED:  # installed means serving it, from now on
        values["active_version"] = outcome.version
    if row is None:
        # A device reports only models the server sent it: a name the catalog never had is a
        # lie or a bug, and gets no row (each would be one more, without bound).
        if (
            conn.execute(
                sa.select(releases.c.model_name)
                .where(releases.c.model_name == outcome.model_name)
                .limit(1)
            ).first()
            is None
        ):
            return False
        conn.execute(
            device_models.insert().values(
                device_id=outcome.device_id, model_name=outcome.model_name, **values
            )
        )
    else:
        conn.execute(device_models.update().where(key).values(**values))
    rollout = _ROLLOUT.get(outcome.state)
    if rollout is None:
        return False
    if rollout == DeviceState.FAILED:
        notice = _refused(conn, outcome, state, now)
        if notice is not None:
            record(conn, [notice])
    detail = "" if rollout == DeviceState.INSTALLED else f"{state}: {outcome.detail}"
    record_outcome(
        conn, outcome.device_id, outcome.model_name, outcome.version, rollout, detail, now
    )
    return True


def _refused(conn: sa.Connection, outcome: Outcome, state: str, now: int) -> Event | None:
    """The notice of a device that refused a release or rolled it back: once a day per device,
    version and state, and only of a release the server has. A device's reports are its own
    to repeat: one that sent a failure of invented versions in a loop made a notice of each,
    an operator's receiver flooded and the outbox grown without bound. A numbered step's copies
    (over MQTT and over the device API) are one notice the same way."""
    known = conn.execute(
        sa.select(releases.c.version).where(
            (releases.c.model_name == outcome.model_name) & (releases.c.version == outcome.version)
        )
    ).first()
    if known is None:
        return None
    name = conn.execute(
        sa.select(devices.c.name).where(devices.c.device_id == outcome.device_id)
    ).scalar()
    data = {
        "device_id": outcome.device_id,
        "name": str(name or ""),
        "model": outcome.model_name,
        "version": outcome.version,
        "state": state,
        "detail": outcome.detail,  # stored text already (escaping it again doubled backslashes)
    }
    day = now // 86400
    key = event_id(
        EventType.UPDATE_REFUSED, outcome.device_id, outcome.model_name, outcome.version, state, day
    )
    return Event(EventType.UPDATE_REFUSED, data, id=key, at=now)
