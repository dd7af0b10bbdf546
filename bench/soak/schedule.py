"""The fault schedule: which fault lands when, decided from a seed and nothing else.

Pure: ``plan`` takes the run's length, the fault kinds asked for and a seed, and returns the
same list of faults for the same inputs, so a failing run is replayed with its ``--seed``. The
faults do not overlap: each starts after the previous one's ``hold`` has passed, and none
starts in the last tenth of the run (the system is then left to settle).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CI_FAULTS", "Fault", "FaultKind", "parse_kinds", "plan"]


class FaultKind(enum.Enum):
    """One kind of fault the harness injects (the value is its name on the command line)."""

    BROKER_RESTART = "broker-restart"  # mosquitto SIGTERM + start, persistence on
    BROKER_LOSSY = "broker-lossy"  # mosquitto SIGKILL + start without persistence
    SERVER_KILL = "server-kill"  # fleet server SIGKILL + start (embedded broker dies with it)
    DB_CUT = "db-cut"  # PostgreSQL link cut at the proxy (PostgreSQL runs only)
    AGENT_KILL = "agent-kill"  # agent SIGKILL while an update downloads or is verified
    DISK_FULL = "disk-full"  # an agent's state dir (a small tmpfs) filled, then freed
    LINK_CUT = "link-cut"  # the agents' device link cut while a download runs
    CLOCK_STEP = "clock-step"  # an agent's wall clock stepped (LD_PRELOAD shim)


# The 2-minute variant (issue 19, "Done when").
CI_FAULTS = (
    FaultKind.BROKER_LOSSY,
    FaultKind.SERVER_KILL,
    FaultKind.AGENT_KILL,
    FaultKind.DISK_FULL,
)

# Mean seconds between two faults of a kind, and how long one holds (min, max) seconds.
_PERIOD_S = {
    FaultKind.BROKER_RESTART: 90.0,
    FaultKind.BROKER_LOSSY: 90.0,
    FaultKind.SERVER_KILL: 100.0,
    FaultKind.DB_CUT: 150.0,
    FaultKind.AGENT_KILL: 60.0,
    FaultKind.DISK_FULL: 120.0,
    FaultKind.LINK_CUT: 90.0,
    FaultKind.CLOCK_STEP: 60.0,
}
_HOLD_S = {
    FaultKind.BROKER_RESTART: (1.0, 4.0),
    FaultKind.BROKER_LOSSY: (1.0, 4.0),
    FaultKind.SERVER_KILL: (1.0, 4.0),
    FaultKind.DB_CUT: (20.0, 60.0),
    FaultKind.AGENT_KILL: (1.0, 3.0),
    FaultKind.DISK_FULL: (8.0, 20.0),
    FaultKind.LINK_CUT: (3.0, 10.0),
    FaultKind.CLOCK_STEP: (0.0, 0.0),
}
_CLOCK_STEPS_S = (-300, -90, -30, 30, 90, 300, 3600)


@dataclass(frozen=True)
class Fault:
    """One fault: its kind, when it starts (seconds into the run), how long it holds, and for a
    clock step the new offset of the agent's wall clock in seconds."""

    at_s: float
    kind: FaultKind
    hold_s: float
    offset_s: int = 0

    def describe(self) -> str:
        """One line for the run's log."""
        extra = f", clock offset {self.offset_s:+d} s" if self.kind is FaultKind.CLOCK_STEP else ""
        return f"t+{self.at_s:.0f}s {self.kind.value} for {self.hold_s:.1f} s{extra}"


def parse_kinds(text: str, *, postgres: bool) -> tuple[FaultKind, ...]:
    """``all``, ``ci`` or a comma-separated list of kinds; ``db-cut`` only with PostgreSQL.

    Raises:
        ValueError: an unknown kind, or db-cut asked for without PostgreSQL.
    """
    if text == "all":
        kinds = [k for k in FaultKind if postgres or k is not FaultKind.DB_CUT]
        return tuple(kinds)
    if text == "ci":
        return CI_FAULTS
    known = {k.value: k for k in FaultKind}
    chosen = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name not in known:
            raise ValueError(f"unknown fault {name!r}; choose from {', '.join(known)}, all, ci")
        chosen.append(known[name])
    if FaultKind.DB_CUT in chosen and not postgres:
        raise ValueError("db-cut needs --db postgres (SQLite has no link to cut)")
    return tuple(dict.fromkeys(chosen))


def plan(duration_s: float, kinds: Iterable[FaultKind], seed: int) -> list[Fault]:
    """The faults of a run of ``duration_s`` seconds, in start order.

    Each kind gets ``duration / its period`` faults (at least one), at random times; a fault
    that would overlap the previous one moves after it; faults that no longer fit before 90 %
    of the run are left out. The same arguments always give the same list.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not cryptography
    start, end = 0.1 * duration_s, 0.9 * duration_s
    wanted: list[tuple[float, FaultKind]] = []
    for kind in sorted(set(kinds), key=lambda k: k.value):
        count = max(1, round(duration_s / _PERIOD_S[kind]))
        wanted += [(rng.uniform(start, end), kind) for _ in range(count)]
    wanted.sort(key=lambda w: (w[0], w[1].value))
    faults: list[Fault] = []
    free_at = start
    offset = 0
    for wanted_at, kind in wanted:
        low, high = _HOLD_S[kind]
        hold = round(rng.uniform(low, high), 1)
        if kind is FaultKind.CLOCK_STEP:
            # Every other step goes back to the true time, so the clock is not wrong for good.
            offset = 0 if offset else rng.choice(_CLOCK_STEPS_S)
        at = max(wanted_at, free_at)
        if at + hold > end:
            continue
        faults.append(Fault(round(at, 1), kind, hold, offset))
        free_at = at + hold + 5.0  # time for the system to notice before the next fault
    return faults
