"""Bounds on what one device may make the server store, judged on when the device generated
its messages, not on when they arrive.

A device that was offline for a day replays its spool (up to its bound, 10,000 messages by
default) as fast as the link allows; every one of those must be stored. A hostile or broken
device that publishes 20,000 events in three seconds, or numbers a message 2^62 so that its real
messages look like duplicates from then on, must not be able to. Both are told apart by the
device's own clock, checked against the server's:

- **Rate.** Each device has a bucket of ``burst`` messages, refilled at ``rate`` per second of
  the device's sent time, counted only past the highest sent time seen so far (and never past
  the server's clock plus ``skew_s``); while the device's clock has stepped back, the server's
  clock refills it instead. A replay of reports generated over a day refills as it goes; a
  burst generated in seconds does not.
- **Sequence jumps.** A message may advance the device's sequence by at most what it could have
  generated since the last accepted one (elapsed time x ``rate``), plus the telemetry its
  spool says it dropped, plus the default spool bound. A bigger jump is refused, and adopted
  only after ``adopt_after`` consecutive messages continue from it (a server restored from an
  old backup sees real jumps; a single forged number is not followed).

Everything here is per device and in memory; after a server restart a device starts with a
full bucket and its stored position (``last_at_s``: when its last report was stored), and no
credit for send times before that (or before its enrollment).
"""

from __future__ import annotations

from collections import OrderedDict
from copy import copy
from dataclasses import dataclass

__all__ = ["Guard", "Judgement"]

SPOOL_BOUND = 10_000  # the agent's default telemetry.spool_max_messages


@dataclass
class _Device:
    tokens: float
    high_ms: int  # highest sent time seen (capped at the server's clock + skew)
    seen_s: float  # server time of the last message judged
    last_ms: int = 0  # sent time of the last accepted message (0: unknown)
    last_s: float = 0.0  # server time of the last accepted message
    candidate: tuple[str, int, int] | None = None  # (epoch, seq, consecutive messages)


@dataclass(frozen=True)
class Judgement:
    ok: bool
    reason: str = ""  # why not: "rate" or "jump"
    adopted: bool = False  # a refused jump adopted after consistent messages


class Guard:
    """Judge each device message before it is deduplicated and stored."""

    def __init__(
        self,
        *,
        rate: float = 4.0,
        burst: float = 1000.0,
        skew_s: float = 300.0,
        adopt_after: int = 3,
        devices: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.skew_ms = int(skew_s * 1000)
        self.adopt_after = adopt_after
        self._max_devices = devices
        self._devices: OrderedDict[str, _Device] = OrderedDict()

    def forget(self, device_id: str) -> None:
        self._devices.pop(device_id, None)

    def snapshot(self, device_ids: set[str]) -> dict[str, _Device | None]:
        """The state of these devices, to :meth:`restore` when a batch is not stored (its
        retry must not spend the devices' budgets twice)."""
        devices = self._devices
        return {d: (copy(s) if (s := devices.get(d)) else None) for d in device_ids}

    def restore(self, snapshot: dict[str, _Device | None]) -> None:
        for device_id, state in snapshot.items():
            if state is None:
                self._devices.pop(device_id, None)
            else:
                self._devices[device_id] = state

    def _device(self, device_id: str, now_s: float, sent_ms: int, since_s: float | None) -> _Device:
        state = self._devices.get(device_id)
        if state is None:
            # No credit for time before the server last heard from the device (or enrolled
            # it): a clock that starts in the past would otherwise buy days of messages.
            floor = int((since_s - self.skew_ms / 1000) * 1000) if since_s else sent_ms
            state = _Device(self.burst, max(sent_ms, floor), now_s)
            self._devices[device_id] = state
            while len(self._devices) > self._max_devices:
                self._devices.popitem(last=False)
        self._devices.move_to_end(device_id)
        return state

    def admit(
        self, device_id: str, sent_ms: int, now_s: float, since_s: float | None = None
    ) -> Judgement:
        """Take one new message's token (the rate bound; duplicates are not judged, so a
        redelivery does not use up the device's budget). A device clock ahead of the
        server's by more than the skew counts as the server's clock plus the skew: it is
        neither refused nor given more than real time. ``since_s``: when the server last
        stored a report of the device, or enrolled it (used when the device is new to the
        guard)."""
        sent_ms = min(sent_ms, int(now_s * 1000) + self.skew_ms)
        state = self._device(device_id, now_s, sent_ms, since_s)
        if sent_ms > state.high_ms:
            refill = (sent_ms - state.high_ms) / 1000 * self.rate
            state.high_ms = sent_ms
        else:  # the device's clock is behind what it said before: real time refills
            refill = max(0.0, now_s - state.seen_s) * self.rate
        state.tokens = min(self.burst, state.tokens + refill)
        state.seen_s = max(state.seen_s, now_s)
        if state.tokens < 1.0:
            return Judgement(False, "rate")
        state.tokens -= 1.0
        return Judgement(True)

    def allowance(
        self, device_id: str, sent_ms: int, now_s: float, dropped: int, last_at_s: float | None
    ) -> int:
        """How far the sequence may advance with this message (the spool's own count of
        dropped telemetry, which a device reports, counts up to one spool bound)."""
        sent_ms = min(sent_ms, int(now_s * 1000) + self.skew_ms)
        state = self._devices.get(device_id)
        if state is not None and state.last_ms:
            elapsed = max(sent_ms - state.last_ms, 0) / 1000
            elapsed = max(elapsed, now_s - state.last_s)
        elif last_at_s is not None:
            elapsed = max(0.0, now_s - last_at_s)
        else:
            elapsed = 0.0
        return int(elapsed * self.rate) + min(dropped, SPOOL_BOUND) + SPOOL_BOUND + 1

    def jump(
        self,
        device_id: str,
        epoch: str,
        seq: int,
        advance: int,
        allowance: int,
    ) -> Judgement:
        """Judge a sequence advance of ``advance`` (a new epoch: from 0) against ``allowance``."""
        state = self._devices.get(device_id)
        if advance <= allowance or state is None:
            if state is not None:
                state.candidate = None
            return Judgement(True)
        candidate = state.candidate
        if (
            candidate is not None
            and candidate[0] == epoch
            and 0 < seq - candidate[1] <= SPOOL_BOUND
        ):
            count = candidate[2] + 1
            if count >= self.adopt_after:
                state.candidate = None
                return Judgement(True, adopted=True)
            state.candidate = (epoch, seq, count)
        else:
            state.candidate = (epoch, seq, 1)
        return Judgement(False, "jump")

    def accepted(self, device_id: str, sent_ms: int, now_s: float) -> None:
        """Remember an accepted message's times (the reference for the next jump)."""
        state = self._devices.get(device_id)
        if state is not None:
            state.last_ms = max(state.last_ms, sent_ms)
            state.last_s = now_s
