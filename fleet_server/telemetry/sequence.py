"""Sequence accounting for device messages: what the server has stored of each device's
sequence, what it still awaits, and what is accounted for otherwise.

Agents number every telemetry and event message from one counter that survives restarts (the
spool's); the spool's random epoch changes only when a device lost or replaced its spool. A
device keeps each message until the server's acknowledgement covers it and publishes again
what the server reports missing, so numbers arrive at least once, and not always in order.

A :class:`Ledger` holds, for a device's current epoch, the highest number stored and the ranges
below it not stored yet (``missing``, at most :data:`MAX_RANGES`). A message is:

- *new* above the highest (a jump opens a missing range), or *filled* when it falls in a
  missing range (a late arrival: neither a duplicate nor a loss);
- *deferred* when storing it would open more than :data:`MAX_RANGES` ranges: it is not stored
  and not acknowledged, so the device keeps it and sends it again once the gaps below are
  filled (the acknowledgement never says "stored" for a number that was not);
- a *duplicate* anywhere else, and only then. The ledgers of the last :data:`RETIRED_EPOCHS`
  epochs a device left are kept: a message of one of them (a late copy from a replaced
  spool, or one forged under it) is judged against what that epoch stored, so switching epochs
  back and forth stores nothing twice, and freezes nothing.

A missing number is given up only (1) as *dropped* when the device says it no longer holds it
(its floor: the spool's bound dropped it, counted by the device), or (2) as *lost* when the
device starts a new epoch (its old spool is gone). So, per epoch,
stored + dropped + lost + pending = highest.

The ledger lives in the database (``devices.telemetry_ledger``) and is read and written in the
transaction that stores the messages, so server replicas on one shared subscription, and the
MQTT and gRPC paths, agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

__all__ = ["MAX_RANGES", "RETIRED_EPOCHS", "Ledger", "Verdict", "lost_between"]

MAX_RANGES = 64  # missing ranges per device; a message that would open more is deferred
RETIRED_EPOCHS = 4  # ledgers of epochs a device left that are kept


class Verdict(Enum):
    NEW = "new"
    FILLED = "filled"  # a late arrival into a missing range
    DEFERRED = "deferred"  # not stored now: it would open too many missing ranges
    DUPLICATE = "duplicate"


Ranges = tuple[tuple[int, int], ...]


def _count(ranges: Ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


@dataclass(frozen=True)
class Ledger:
    """What the server has stored of one device's current epoch (see the module docstring)."""

    epoch: str = ""
    highest: int = 0
    missing: Ranges = ()
    stored: int = 0
    dropped: int = 0  # given up: the device no longer held them (its bound)
    lost: int = 0  # given up by the server (the epoch's spool is gone)
    lost_epochs: int = 0  # earlier epochs that ended with messages unaccounted for
    replaced: str = ""  # why the device's previous spool was replaced, as it said
    retired: tuple[Ledger, ...] = ()  # the ledgers of epochs the device left, newest last

    @property
    def pending(self) -> int:
        """Numbers below the highest still awaited."""
        return _count(self.missing)

    @property
    def mark(self) -> int:
        """Every number up to this is accounted for."""
        return self.missing[0][0] - 1 if self.missing else self.highest

    def receive(self, epoch: str, seq: int) -> tuple[Ledger, Verdict]:
        """Account for message ``seq`` of ``epoch``."""
        if epoch != self.epoch:
            return self._switch(epoch).receive(epoch, seq)
        if seq > self.highest:
            if seq == self.highest + 1:
                missing = self.missing
            elif len(self.missing) < MAX_RANGES:
                missing = (*self.missing, (self.highest + 1, seq - 1))
            else:
                return self, Verdict.DEFERRED
            return replace(self, highest=seq, missing=missing, stored=self.stored + 1), Verdict.NEW
        for index, (lo, hi) in enumerate(self.missing):
            if lo <= seq <= hi:
                split = tuple(r for r in ((lo, seq - 1), (seq + 1, hi)) if r[0] <= r[1])
                if len(self.missing) - 1 + len(split) > MAX_RANGES:
                    return self, Verdict.DEFERRED
                missing = self.missing[:index] + split + self.missing[index + 1 :]
                return replace(self, missing=missing, stored=self.stored + 1), Verdict.FILLED
        return self, Verdict.DUPLICATE

    def _switch(self, epoch: str) -> Ledger:
        """The ledger of ``epoch``, this one parked. An epoch the device left is taken up
        where it was (a late copy of its messages, or a message forged under it, is judged
        against what was stored: never stored twice). A new spool counts from 1: what the
        old one still awaited is lost, and the new one's numbers are awaited."""
        parked = replace(self, retired=())
        others = tuple(r for r in self.retired if r.epoch != epoch)
        kept = (*others, parked) if self.epoch else others
        earlier = next((r for r in self.retired if r.epoch == epoch), None)
        if earlier is not None:
            return replace(earlier, retired=kept[-RETIRED_EPOCHS:], lost_epochs=self.lost_epochs)
        return Ledger(
            epoch=epoch,
            lost_epochs=self.lost_epochs + (1 if self.epoch and self.pending else 0),
            retired=kept[-RETIRED_EPOCHS:],
        )

    def floor(self, epoch: str, floor: int) -> Ledger:
        """The device holds nothing below ``floor`` (of ``epoch``): what is missing there was
        dropped by its bound. Another epoch's floor (or 0, "unknown") changes nothing."""
        if epoch != self.epoch or floor <= 0:
            return self
        kept: list[tuple[int, int]] = []
        dropped = 0
        for lo, hi in self.missing:
            if hi < floor:
                dropped += hi - lo + 1
            elif lo < floor:
                dropped += floor - lo
                kept.append((floor, hi))
            else:
                kept.append((lo, hi))
        if not dropped:
            return self
        return replace(self, missing=tuple(kept), dropped=self.dropped + dropped)

    def with_reason(self, why: str) -> Ledger:
        """Record why the device replaced its previous spool (once per epoch)."""
        return self if self.replaced or not why else replace(self, replaced=why[:200])

    def to_json(self) -> str:
        return json.dumps(self._fields(), separators=(",", ":"))

    def _fields(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "highest": self.highest,
            "missing": [list(r) for r in self.missing],
            "stored": self.stored,
            "dropped": self.dropped,
            "lost": self.lost,
            "lost_epochs": self.lost_epochs,
            "replaced": self.replaced,
            "retired": [r._fields() for r in self.retired],
        }

    @classmethod
    def load(cls, raw: str | None, epoch: str | None = None, last_seq: int | None = None) -> Ledger:
        """The stored ledger; without one (a database from before ledgers), one that takes
        everything up to the last number seen as accounted for."""
        if raw:
            try:
                return cls._from(json.loads(raw))
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # a damaged row: start again from the plain columns
        seq = int(last_seq or 0)
        return cls(epoch=epoch or "", highest=seq, stored=seq)

    @classmethod
    def _from(cls, data: dict[str, Any], nested: bool = False) -> Ledger:
        retired = () if nested else data.get("retired", ())
        return cls(
            epoch=str(data["epoch"]),
            highest=int(data["highest"]),
            missing=tuple((int(lo), int(hi)) for lo, hi in data["missing"]),
            stored=int(data["stored"]),
            dropped=int(data["dropped"]),
            lost=int(data["lost"]),
            lost_epochs=int(data.get("lost_epochs", 0)),
            replaced=str(data.get("replaced", "")),
            retired=tuple(cls._from(r, nested=True) for r in retired if isinstance(r, dict))[
                -RETIRED_EPOCHS:
            ],
        )


def lost_between(before: Ledger, after: Ledger) -> int:
    """Messages given up as lost from ``before`` to ``after``: the new losses of the epoch, and
    when the epoch changed, everything the old one still awaited."""
    if before.epoch == after.epoch:
        return after.lost - before.lost
    if any(r.epoch == after.epoch for r in before.retired):
        return 0  # an epoch taken up again: nothing was given up
    return after.lost + (before.pending if before.epoch else 0)
