"""The decisions of a staged rollout, as pure functions (no I/O, no clock).

A rollout sends one model version to the devices matching a label selector, in waves. Wave
targets are cumulative ("1", "10%", "50%", "100%": one canary, then a tenth of the devices in
all, then half, then all). Which device lands in which wave is a stable hash of the rollout and
the device, so canaries are spread over the fleet and the same on every replica.

After each wave starts, the rollout waits until enough of that wave has installed the version
(the success threshold, over the wave's devices that did not fail) and, with a bake time, kept
it that long, before the next wave starts; when the failed fraction of all devices started so
far reaches the failure threshold, it pauses with the reason.

A device fails by reporting a failed update or a health rollback, or by breaking the rollout's
health gate: its telemetry after installing shows too many errors, or a p95 latency too far
above what the same device measured before the rollout (:func:`judge_health`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet_server.errors import BadRequestError

__all__ = [
    "DEFAULT_WAVES",
    "Counts",
    "Decision",
    "HealthGate",
    "Wave",
    "assign_waves",
    "decide",
    "judge_health",
    "parse_waves",
    "wave_targets",
]

DEFAULT_WAVES = ("1", "10%", "50%", "100%")
MAX_WAVES = 20
_COUNT = re.compile(r"^[1-9][0-9]{0,8}$")
_PERCENT = re.compile(r"^([0-9]{1,3}(?:\.[0-9]{1,3})?)%$")


@dataclass(frozen=True)
class Wave:
    """One cumulative target: an absolute device count or a percent of the matching devices."""

    count: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_waves(spec: Sequence[str]) -> tuple[Wave, ...]:
    """Parse wave targets such as ``["1", "10%", "100%"]``.

    Raises:
        BadRequestError: a target is malformed, they shrink, or the last is not 100%.
    """
    raw = [s.strip() for s in spec if s.strip()] or list(DEFAULT_WAVES)
    if len(raw) > MAX_WAVES:
        raise BadRequestError(f"{len(raw)} waves; at most {MAX_WAVES}")
    waves: list[Wave] = []
    for text in raw:
        percent = _PERCENT.match(text)
        if _COUNT.match(text):
            waves.append(Wave(count=int(text)))
        elif percent and 0 < float(percent.group(1)) <= 100:
            waves.append(Wave(percent=float(percent.group(1))))
        else:
            raise BadRequestError(
                f"wave {text!r} is neither a device count (e.g. 5) nor a percent in (0, 100] "
                "(e.g. 10%)"
            )
    if waves[-1].percent != 100:
        raise BadRequestError(
            f"the last wave is {waves[-1]}; waves are cumulative and the last must be 100%"
        )
    percents = [w.percent for w in waves if w.percent is not None]
    counts = [w.count for w in waves if w.count is not None]
    if percents != sorted(percents) or counts != sorted(counts):
        raise BadRequestError(f"waves {', '.join(raw)} shrink; each target includes the last")
    return tuple(waves)


def wave_targets(waves: Sequence[Wave], devices: int) -> list[int]:
    """Cumulative device counts per wave for ``devices`` matching devices.

    Never shrinks, never exceeds ``devices``, ends at ``devices``; a percent that rounds to zero
    still takes one device, so no wave is empty by accident while devices remain.
    """
    targets: list[int] = []
    previous = 0
    for wave in waves:
        if wave.count is not None:
            want = wave.count
        else:
            want = max(1, math.ceil(devices * (wave.percent or 0.0) / 100 - 1e-9))
        value = min(devices, max(previous, want))
        targets.append(value)
        previous = value
    if targets:
        targets[-1] = devices
    return targets


def _rank(rollout_id: int, device_id: str) -> bytes:
    return hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()


def assign_waves(
    rollout_id: int, device_ids: Iterable[str], waves: Sequence[Wave]
) -> dict[str, int]:
    """Device id -> wave index, for the devices matching at creation."""
    ordered = sorted(set(device_ids), key=lambda d: _rank(rollout_id, d))
    targets = wave_targets(waves, len(ordered))
    result: dict[str, int] = {}
    wave = 0
    for position, device_id in enumerate(ordered):
        while position >= targets[wave]:
            wave += 1
        result[device_id] = wave
    return result


TELEMETRY_FAILURE = "telemetry: "  # how the details of health gate failures begin


@dataclass(frozen=True)
class HealthGate:
    """What a device's telemetry must show about the new version after installing it."""

    max_error_rate: float = 0.05
    max_latency_ratio: float = 1.5
    window_s: int = 600
    min_requests: int = 50
    bake_s: int = 0  # how long a wave's installs must last before the next wave starts
    disabled: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.max_error_rate <= 1:
            raise BadRequestError(f"max error rate {self.max_error_rate} is outside (0, 1]")
        if not 1 <= self.max_latency_ratio <= 1000:
            raise BadRequestError(
                f"max latency ratio {self.max_latency_ratio} is outside 1..1000 (1.5 = 50% "
                "slower than before)"
            )
        for name, value in (("health window", self.window_s), ("bake time", self.bake_s)):
            if not 0 <= value <= 30 * 86400:
                raise BadRequestError(f"{name} {value} s is outside 0..30 days")
        if not 1 <= self.min_requests <= 10**9:
            raise BadRequestError(f"min requests {self.min_requests} is outside 1..10^9")

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HealthGate:
        """The gate stored with a rollout; rollouts from before gates existed have none."""
        fields = json.loads(text or "{}")
        if not fields:
            return cls(disabled=True)
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


def judge_health(
    gate: HealthGate, requests: int, errors: int, p95_ms: float, baseline_p95_ms: float | None
) -> str:
    """Why a device's telemetry since installing breaks the gate ("" when it does not).

    Nothing is judged before ``gate.min_requests`` requests: a handful of errors on an idle
    device says little. Latency is compared with the same device's p95 before the rollout, so
    slow hardware is not held against a model; without that baseline only errors count.
    """
    if gate.disabled or requests < gate.min_requests:
        return ""
    rate = errors / requests
    if rate > gate.max_error_rate:
        return (
            f"{TELEMETRY_FAILURE}error rate {rate:.1%} over {requests} requests after "
            f"installing (gate {gate.max_error_rate:.1%})"
        )
    if baseline_p95_ms and p95_ms > baseline_p95_ms * gate.max_latency_ratio:
        return (
            f"{TELEMETRY_FAILURE}p95 latency {p95_ms:.1f} ms against {baseline_p95_ms:.1f} ms "
            f"before the rollout (gate {gate.max_latency_ratio:g}x)"
        )
    return ""


@dataclass(frozen=True)
class Counts:
    """Device states of one wave (or of several waves added together). ``baked`` are the
    installed devices that have kept the version for the bake time (all of them without one)."""

    devices: int = 0
    waiting: int = 0
    assigned: int = 0
    installed: int = 0
    failed: int = 0
    baked: int | None = None

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.devices + other.devices,
            self.waiting + other.waiting,
            self.assigned + other.assigned,
            self.installed + other.installed,
            self.failed + other.failed,
            self.settled + other.settled,
        )

    @property
    def settled(self) -> int:
        """Installed devices that count towards the success threshold."""
        return self.installed if self.baked is None else self.baked


@dataclass(frozen=True)
class Decision:
    """What a running rollout should do now: "wait", "advance", "complete" or "pause"."""

    action: str
    reason: str = ""


def decide(
    waves: Sequence[Counts],
    current: int,
    success_threshold: float,
    failure_threshold: float,
    forgiven: int = 0,
) -> Decision:
    """The next step of a running rollout whose waves ``0..current`` have started.

    Failures are judged over every started wave (a health rollback in an early wave still
    counts); success over the current wave alone. ``forgiven`` failures (those an admin saw
    before resuming) do not count again.
    """
    started = sum(waves[: current + 1], Counts())
    failed = started.failed - forgiven
    if failed > 0 and failed >= failure_threshold * max(started.devices, 1):
        return Decision(
            "pause",
            f"{started.failed} of {started.devices} devices failed"
            + (f" ({forgiven} before the last resume)" if forgiven else "")
            + f" (failure threshold {failure_threshold:.0%})",
        )
    wave = waves[current]
    # Devices that failed are the failure gate's business: they do not hold the wave forever.
    if wave.settled < math.ceil(success_threshold * (wave.devices - wave.failed) - 1e-9):
        return Decision("wait")
    if current + 1 >= len(waves):
        return Decision("complete")
    return Decision("advance")
