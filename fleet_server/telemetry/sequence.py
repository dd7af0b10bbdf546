"""Sequence accounting for device messages: drop duplicates, count what went missing.

Agents number every telemetry and event message from one counter that survives restarts (the
spool's); the spool's random epoch changes only when a device lost its state dir. Spools replay
in order and at least once, so per device and epoch a message is new exactly when its number is
above the highest seen; a jump of more than one means messages were lost on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Position", "Verdict", "account"]


@dataclass(frozen=True)
class Position:
    epoch: str
    seq: int


@dataclass(frozen=True)
class Verdict:
    new: bool
    position: Position
    gap: int = 0  # messages lost before this one


def account(position: Position | None, epoch: str, seq: int) -> Verdict:
    """Judge message ``seq`` of ``epoch`` against a device's position (None: never seen)."""
    here = Position(epoch, seq)
    if position is None or not position.epoch:
        return Verdict(True, here)  # nothing to compare with (or an agent from before epochs)
    if epoch != position.epoch:
        # A fresh spool counts from 1; a higher first number means its first messages were lost.
        return Verdict(True, here, gap=max(0, seq - 1))
    if seq <= position.seq:
        return Verdict(False, position)
    return Verdict(True, here, gap=seq - position.seq - 1)
