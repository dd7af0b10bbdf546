"""Log a repeated complaint about the same party once per period, not once per message: one
misbehaving device must not be able to flood the server's log."""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["OncePer"]


class OncePer:
    """Remembers when each key was last let through (at most ``keys`` of them, oldest
    forgotten first, so a stream of made-up keys cannot grow it)."""

    def __init__(self, period_s: float, keys: int = 4096) -> None:
        self._period = period_s
        self._keys = keys
        self._last: OrderedDict[str, float] = OrderedDict()
        self.suppressed = 0

    def first(self, key: str, now: float | None = None) -> bool:
        """True when ``key`` was not let through within the period (and remember it now)."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._keys:
            self._last.popitem(last=False)
        return True
