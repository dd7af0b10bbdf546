"""Log a repeated complaint about the same party once per period, not once per message: one
misbehaving device must not be able to flood the server's log."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

__all__ = ["Budget", "OncePer"]


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


class Budget:
    """A token bucket per key: ``burst`` tokens, refilled at ``rate`` per second (at most
    ``keys`` keys, the least recently used forgotten first). Thread-safe."""

    def __init__(self, burst: float, rate: float, keys: int = 100_000) -> None:
        self._burst, self._rate, self._keys = burst, rate, keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def available(self, key: str, now: float | None = None) -> int:
        """Whole tokens ``key`` may spend now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (self._burst, now))
            return int(min(self._burst, tokens + (now - at) * self._rate))

    def spend(self, key: str, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate) - count
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self._keys:
                self._buckets.popitem(last=False)
