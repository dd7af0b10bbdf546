"""Maintenance windows, as pure functions (no I/O, no clock; the caller passes the time).

A window names the devices it holds with a label selector, the days it opens on and a time of
day it opens and closes, in *each device's* time zone (``[device] timezone`` of its agent,
reported with its capabilities; UTC when it reports none or one this server does not know). A
device that matches at least one window's selector is told to update by a rollout only while
one of those windows is open; a device that matches none is unrestricted.

Times are wall-clock times in the device's zone, so daylight saving time moves a window with
the clocks (zoneinfo): on the night the clocks go forward, 01:00-05:00 in Europe/Berlin lasts
three real hours, and a window entirely inside the skipped hour does not open that night; on
the night they go back, the repeated hour counts twice. A window whose closing time is not
after its opening time crosses midnight: ``fri 22:00-02:00`` opens on Friday at 22:00 and closes
on Saturday at 02:00 (the days are the days it opens).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet_server.errors import BadRequestError
from fleet_server.registry.labels import matches
from protos.zones import zone_of

__all__ = [
    "DAYS",
    "MAX_WINDOWS",
    "Verdict",
    "Window",
    "clock_text",
    "days_text",
    "device_zone",
    "is_open",
    "make_window",
    "next_change",
    "parse_clock",
    "parse_days",
    "verdict",
]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 256  # windows in a fleet (every device's check is over all of them)
_EVERY_DAY = frozenset(range(7))
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DAY = {name: index for index, name in enumerate(DAYS)}
_DAY_WORDS = {"daily": _EVERY_DAY, "every": _EVERY_DAY, "*": _EVERY_DAY}


@dataclass(frozen=True)
class Window:
    """One maintenance window. ``start`` and ``end`` are minutes after local midnight; an
    ``end`` not after ``start`` closes on the next day (``end`` 1440 is midnight)."""

    window_id: int
    selector: Mapping[str, str] = field(hash=False)
    days: frozenset[int]
    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def __str__(self) -> str:
        return f"{days_text(self.days)} {clock_text(self.start)}-{clock_text(self.end)}"


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``sat,sun``, ``fri-mon`` (wraps), ``mon,wed-fri`` or ``daily``.

    Raises:
        BadRequestError: an unknown day or an empty list.
    """
    words = text.strip().lower()
    if words in _DAY_WORDS:
        return _DAY_WORDS[words]
    days: set[int] = set()
    for part in (p.strip() for p in words.split(",")):
        first, dash, last = part.partition("-")
        if first not in _DAY or (dash and last not in _DAY):
            raise BadRequestError(
                f"days {text[:40]!r}: {part[:20]!r} is not a day or a range of days "
                "(mon tue wed thu fri sat sun, e.g. mon-fri or sat,sun, or daily)"
            )
        start, stop = _DAY[first], _DAY[last] if dash else _DAY[first]
        days.update((start + i) % 7 for i in range((stop - start) % 7 + 1))
    return frozenset(days)


def days_text(days: Iterable[int]) -> str:
    """The shortest text :func:`parse_days` reads back: ``mon-fri``, ``sat-sun``, ``daily``."""
    chosen = sorted(set(days))
    if len(chosen) == 7:
        return "daily"
    runs: list[list[int]] = []
    for day in chosen:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 6:  # sun-mon wraps
        runs[0] = runs.pop() + runs[0]
    return ",".join(
        DAYS[r[0]] if len(r) == 1 else f"{DAYS[r[0]]}-{DAYS[r[-1]]}"
        if len(r) > 2 else f"{DAYS[r[0]]},{DAYS[r[1]]}"
        for r in runs
    )  # fmt: skip


def parse_clock(text: str, what: str) -> int:
    """``01:00`` -> 60: minutes after midnight, 00:00 to 24:00.

    Raises:
        BadRequestError: not HH:MM within a day.
    """
    found = _CLOCK.fullmatch(text.strip())
    hours, minutes = (int(found.group(1)), int(found.group(2))) if found else (-1, -1)
    value = hours * 60 + minutes
    if not found or minutes > 59 or not 0 <= value <= 1440:
        raise BadRequestError(f"{what} {text[:20]!r} is not a time of day HH:MM (00:00 to 24:00)")
    return value


def clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def make_window(
    window_id: int, selector: Mapping[str, str], days: str, start: str, end: str
) -> Window:
    """A window from an operator's words.

    Raises:
        BadRequestError: bad days or times, or a window of no length.
    """
    opens, closes = parse_clock(start, "--from"), parse_clock(end, "--to")
    if opens == 1440:
        raise BadRequestError("--from 24:00 is the next day's 00:00; write 00:00")
    if opens == closes:
        raise BadRequestError(
            f"--from and --to are both {clock_text(opens)}: a window needs a length "
            "(00:00 to 24:00 is the whole day)"
        )
    return Window(window_id, dict(selector), parse_days(days), opens, closes)


def device_zone(name: str) -> ZoneInfo:
    """The zone a device reported (see :mod:`protos.zones`): UTC when none or unknown here."""
    return zone_of(name) or zone_of("")  # type: ignore[return-value]  # "" is always UTC


def is_open(window: Window, local: datetime) -> bool:
    """Whether ``window`` is open at the wall-clock time ``local`` (in the device's zone)."""
    minute = local.hour * 60 + local.minute
    today = local.weekday()
    if not window.crosses_midnight:
        return today in window.days and window.start <= minute < window.end
    # Opened today and not closed before midnight, or opened yesterday and not closed yet.
    return (today in window.days and minute >= window.start) or (
        (today - 1) % 7 in window.days and minute < window.end
    )


@dataclass(frozen=True)
class Verdict:
    """Whether a device may be told to update now, and why."""

    restricted: bool  # some window's selector matches the device
    open: bool  # one of those is open now
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.open or not self.restricted


def _matching(windows: Iterable[Window], labels: Mapping[str, str]) -> list[Window]:
    return [w for w in windows if matches(w.selector, labels)]


def verdict(
    windows: Iterable[Window], labels: Mapping[str, str], zone: ZoneInfo, now: float
) -> Verdict:
    """May a device with ``labels`` in ``zone`` be told to update at ``now`` (unix seconds)?"""
    mine = _matching(windows, labels)
    if not mine:
        return Verdict(False, True, "no maintenance window holds it")
    local = datetime.fromtimestamp(now, zone)
    for window in mine:
        if is_open(window, local):
            return Verdict(True, True, f"inside window {window.window_id} ({window})")
    shown = ", ".join(f"{w.window_id} ({w})" for w in mine[:3])
    return Verdict(True, False, f"outside its maintenance window(s) {shown} ({zone.key})")


def _instant(day: date, minutes: int, zone: ZoneInfo) -> float:
    """Unix time of the wall-clock ``minutes`` after midnight of ``day`` in ``zone``. (Aware
    datetime arithmetic is wall-clock arithmetic; a time a DST change skips is read with the
    offset before the change, as zoneinfo does.)"""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    return (midnight + timedelta(minutes=minutes)).timestamp()


def next_change(
    windows: Iterable[Window], labels: Mapping[str, str], zone: ZoneInfo, now: float
) -> float | None:
    """The next instant after ``now`` at which one of the device's windows opens or closes (when
    its :func:`verdict` may change); None when no window holds it."""
    mine = _matching(windows, labels)
    if not mine:
        return None
    today = datetime.fromtimestamp(now, zone).date()
    found: list[float] = []
    for offset in range(-1, 9):
        day = today + timedelta(days=offset)
        for window in mine:
            if day.weekday() not in window.days:
                continue
            closes = window.end + (1440 if window.crosses_midnight else 0)
            found += [_instant(day, window.start, zone), _instant(day, closes, zone)]
    later = [t for t in found if t > now]
    return min(later) if later else None
