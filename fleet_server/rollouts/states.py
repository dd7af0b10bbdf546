"""The states of a rollout and of each of its devices, and the one table of what moves a
rollout from one state to another (pure: no I/O).

A rollout is ``running`` when created. The controller completes it or pauses it (its failure
gate); an admin pauses, resumes, aborts or rolls it back; a fleet-wide deployment of its model
supersedes it. ``superseded`` is final.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "GATED",
    "IN_EFFECT",
    "LIVE",
    "TICKING",
    "TRANSITIONS",
    "DeviceState",
    "Event",
    "RolloutState",
    "next_state",
    "sources",
]


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


class DeviceState(StrEnum):
    """A device within a rollout: waiting -> assigned -> installed | failed."""

    WAITING = "waiting"
    ASSIGNED = "assigned"
    INSTALLED = "installed"
    FAILED = "failed"


class Event(StrEnum):
    PAUSE = "pause"  # an admin
    RESUME = "resume"  # an admin
    ABORT = "abort"  # an admin
    ROLL_BACK = "roll back"  # an admin, with a root-signed rollback
    SUPERSEDE = "supersede"  # a fleet-wide deployment of the model
    COMPLETE = "complete"  # the controller: every wave reached its threshold
    GATE = "gate"  # the controller: the failure gate tripped


_S = RolloutState
_EVERY_UNFINISHED = (_S.RUNNING, _S.PAUSED, _S.COMPLETED, _S.ABORTED, _S.ROLLED_BACK)

# (from, event) -> to. A pair that is not here is refused.
TRANSITIONS: dict[tuple[RolloutState, Event], RolloutState] = {
    (_S.RUNNING, Event.PAUSE): _S.PAUSED,
    (_S.PAUSED, Event.PAUSE): _S.PAUSED,  # pausing twice is no error
    (_S.PAUSED, Event.RESUME): _S.RUNNING,
    (_S.RUNNING, Event.ABORT): _S.ABORTED,
    (_S.PAUSED, Event.ABORT): _S.ABORTED,
    (_S.ABORTED, Event.ABORT): _S.ABORTED,
    (_S.RUNNING, Event.COMPLETE): _S.COMPLETED,
    (_S.RUNNING, Event.GATE): _S.PAUSED,
    **{(s, Event.ROLL_BACK): _S.ROLLED_BACK for s in _EVERY_UNFINISHED if s != _S.ROLLED_BACK},
    **{(s, Event.SUPERSEDE): _S.SUPERSEDED for s in _EVERY_UNFINISHED},
}

# Rollouts an admin or the controller still moves on: at most one per model.
LIVE = frozenset({_S.RUNNING, _S.PAUSED})
# Rollouts the controller looks after (a completed one takes late joiners) and whose devices'
# telemetry is still judged (failures then show in its status; only a running one pauses).
TICKING = frozenset({_S.RUNNING, _S.PAUSED, _S.COMPLETED})
GATED = TICKING
# Rollouts whose assignments still decide what a device runs.
IN_EFFECT = frozenset(_EVERY_UNFINISHED)


def next_state(state: RolloutState, event: Event) -> RolloutState | None:
    """Where ``event`` takes a rollout in ``state``; None when it may not happen there."""
    return TRANSITIONS.get((state, event))


def sources(event: Event) -> list[RolloutState]:
    """The states ``event`` may happen in (for the message that refuses it elsewhere)."""
    return [s for s in RolloutState if (s, event) in TRANSITIONS]
