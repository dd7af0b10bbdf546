"""The states of a rollout and of each of its devices, and the one table of what moves a
rollout from one state to another (pure: no I/O).

A rollout is ``running`` when created, or ``scheduled`` when created with a start time: the
controller starts a scheduled one at that time. The controller completes a running rollout or
pauses it (its failure gate); an admin pauses, resumes, aborts or rolls it back; a fleet-wide
deployment of its model supersedes it. ``superseded`` is final. A rollout paused before it
started waits for its start again when resumed (:func:`next_state`).
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
    "either",
    "next_state",
    "sources",
]


class RolloutState(StrEnum):
    SCHEDULED = "scheduled"
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
    START = "start"  # the controller: a scheduled rollout's start time came


_S = RolloutState
_EVERY_UNFINISHED = (
    _S.SCHEDULED,
    _S.RUNNING,
    _S.PAUSED,
    _S.COMPLETED,
    _S.ABORTED,
    _S.ROLLED_BACK,
)
# A rollout that reached no device has nothing to roll back: abort it instead.
_REACHED = tuple(s for s in _EVERY_UNFINISHED if s not in (_S.SCHEDULED, _S.ROLLED_BACK))

# (from, event) -> to. A pair that is not here is refused.
TRANSITIONS: dict[tuple[RolloutState, Event], RolloutState] = {
    (_S.SCHEDULED, Event.START): _S.RUNNING,
    (_S.SCHEDULED, Event.PAUSE): _S.PAUSED,
    (_S.SCHEDULED, Event.ABORT): _S.ABORTED,
    (_S.RUNNING, Event.PAUSE): _S.PAUSED,
    (_S.PAUSED, Event.PAUSE): _S.PAUSED,  # pausing twice is no error
    (_S.PAUSED, Event.RESUME): _S.RUNNING,
    (_S.RUNNING, Event.ABORT): _S.ABORTED,
    (_S.PAUSED, Event.ABORT): _S.ABORTED,
    (_S.ABORTED, Event.ABORT): _S.ABORTED,
    (_S.RUNNING, Event.COMPLETE): _S.COMPLETED,
    (_S.RUNNING, Event.GATE): _S.PAUSED,
    **{(s, Event.ROLL_BACK): _S.ROLLED_BACK for s in _REACHED},
    **{(s, Event.SUPERSEDE): _S.SUPERSEDED for s in _EVERY_UNFINISHED},
}

# Rollouts an admin or the controller still moves on: at most one per model.
LIVE = frozenset({_S.SCHEDULED, _S.RUNNING, _S.PAUSED})
# Rollouts the controller looks after (a completed one takes late joiners) and whose devices'
# telemetry is still judged (failures then show in its status; only a running one pauses). A
# scheduled one is looked at only once its start time has come (RolloutStore.ticking).
TICKING = frozenset({_S.RUNNING, _S.PAUSED, _S.COMPLETED})
GATED = TICKING
# Rollouts whose assignments still decide what a device runs (a scheduled one's version is
# kept and its manifests renewed like theirs: it will).
IN_EFFECT = frozenset(_EVERY_UNFINISHED)


def next_state(state: RolloutState, event: Event, *, started: bool = True) -> RolloutState | None:
    """Where ``event`` takes a rollout in ``state``; None when it may not happen there.

    A rollout paused before it ever started (``started`` false) is resumed into ``scheduled``:
    the controller starts it, at its start time or at once when that has passed, so every
    start goes one way (the devices planned afresh, the audit entry, the log line).
    """
    to = TRANSITIONS.get((state, event))
    if to == _S.RUNNING and event == Event.RESUME and not started:
        return _S.SCHEDULED
    return to


def sources(event: Event) -> list[RolloutState]:
    """The states ``event`` may happen in (for the message that refuses it elsewhere)."""
    return [s for s in RolloutState if (s, event) in TRANSITIONS]


def either(states: list[RolloutState]) -> str:
    """``running, paused or scheduled``: states for a message."""
    names = [str(s) for s in states]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
