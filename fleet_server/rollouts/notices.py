"""What a rollout's step tells operators (``rollout.paused``, ``rollout.failed``,
``rollout.completed``; docs/notifications.md), recorded in the step's own transaction: the
notice commits with the change, or neither does."""

from __future__ import annotations

import sqlalchemy as sa

from fleet_server.rollouts.states import RolloutState
from fleet_server.storage.schema import rollouts
from fleet_server.webhooks.events import Event, EventType
from fleet_server.webhooks.store import record

__all__ = ["announce"]

_TYPES = {
    RolloutState.PAUSED: EventType.ROLLOUT_PAUSED,
    RolloutState.ABORTED: EventType.ROLLOUT_FAILED,
    RolloutState.ROLLED_BACK: EventType.ROLLOUT_FAILED,
    RolloutState.COMPLETED: EventType.ROLLOUT_COMPLETED,
}


def announce(
    conn: sa.Connection, rollout_id: int, state: RolloutState, reason: str, *, by: str, now: int
) -> None:
    """Record the notice of a rollout that moved to ``state`` (nothing for other states);
    ``by`` is who moved it: "controller" (its gates, its completion) or "admin"."""
    kind = _TYPES.get(state)
    if kind is None:
        return
    row = conn.execute(
        sa.select(rollouts.c.model_name, rollouts.c.version, rollouts.c.current_wave).where(
            rollouts.c.rollout_id == rollout_id
        )
    ).one()
    data = {
        "rollout_id": rollout_id,
        "model": str(row[0]),
        "version": str(row[1]),
        "state": str(state),
        "wave": int(row[2]),
        "reason": reason,
        "by": by,
    }
    record(conn, [Event(kind, data, at=now)])
