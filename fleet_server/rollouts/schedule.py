"""Scheduled rollouts: which start times are accepted, and when a scheduled rollout starts (pure:
no I/O, no clock; the caller passes the time).

A rollout created with a start time is ``scheduled`` and tells no device anything until the
controller starts it. The start is a state in the database, not a timer: the controller of any
replica starts a rollout whose start time has come, once (the row lock orders replicas, and a
started rollout is ``running``). So a server that was down at the start time starts it when it
comes back, and a clock stepped backwards delays a start (until the clock reaches it again)
but can neither lose it nor start it twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fleet_server.errors import BadRequestError

__all__ = [
    "GRACE_S",
    "LATE",
    "LATE_AFTER_S",
    "MAX_AHEAD_S",
    "Start",
    "check_start",
    "iso_utc",
    "start",
]

GRACE_S = 300  # a start this far in the past is "now" (a command typed a minute late)
MAX_AHEAD_S = 365 * 86400  # a start further ahead is a typo (a year too far)
LATE_AFTER_S = 60  # a start this much after its time says why (several controller ticks)
LATE = "late: "  # how the reason of a late start begins


def iso_utc(unix: int) -> str:
    """``2026-12-24T02:00Z`` (seconds shown only when there are any)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix))
    return (text[:-3] if text.endswith(":00") else text) + "Z"


def check_start(start_unix: int, now: float) -> int:
    """A requested start time (unix seconds, UTC) once it is neither past nor too far ahead.

    Raises:
        BadRequestError: more than :data:`GRACE_S` in the past, or more than a year ahead.
    """
    if start_unix < now - GRACE_S:
        raise BadRequestError(
            f"start time {iso_utc(start_unix)} is in the past (it is {iso_utc(int(now))} now); "
            "give a time to come, in UTC (e.g. 2026-12-24T02:00Z), or no start time to start now"
        )
    if start_unix > now + MAX_AHEAD_S:
        raise BadRequestError(
            f"start time {iso_utc(start_unix)} is more than a year ahead (it is "
            f"{iso_utc(int(now))} now); check the year"
        )
    return start_unix


@dataclass(frozen=True)
class Start:
    """Whether a scheduled rollout starts now, and the reason its status and log show."""

    due: bool
    reason: str
    late_s: int = 0


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d" * bool(days), f"{hours} h" * bool(hours), f"{minutes} min" * bool(minutes)]
    return " ".join(p for p in parts if p) or f"{seconds} s"


def start(start_unix: int, now: float) -> Start:
    """Whether a rollout scheduled for ``start_unix`` starts at ``now``, and why.

    A start more than :data:`LATE_AFTER_S` after its time says so: no server ran its
    controller then (all were down, or could not reach the database).
    """
    at = iso_utc(start_unix)
    late = int(now) - start_unix
    if late < 0:
        return Start(False, f"scheduled for {at}")
    if late <= LATE_AFTER_S:
        return Start(True, f"started at its scheduled time {at}")
    return Start(
        True,
        f"{LATE}started {_span(late)} after its scheduled time {at}: no server was running "
        "its controller then",
        late,
    )
