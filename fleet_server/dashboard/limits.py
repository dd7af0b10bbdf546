"""How many wrong admin tokens the dashboard takes (its login and its ``/metrics``), and how
many of them it logs. Pure: the caller passes the time.

- At most ``per_address`` wrong tokens from one client address within ``window_s``: then every
  attempt from that address (a right token too) is answered 429 until the oldest of them is
  ``window_s`` old (``Retry-After`` says when).
- At most ``overall`` wrong tokens from all addresses together within ``window_s``: then every
  attempt is answered 429 for as long. Sessions already open go on; the command line is not
  affected. (Tokens are 32 random bytes: the limits bound the work and the log, guessing is
  hopeless anyway.)
- At most ``log_lines`` warning lines within ``window_s``; the next line says how many wrong
  tokens went unlogged.

Memory is bounded by ``overall``: only addresses with a wrong token in the window are kept.
"""

from __future__ import annotations

import math
import threading
from collections import deque

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """Thread-safe."""

    def __init__(
        self,
        *,
        per_address: int = 5,
        overall: int = 60,
        window_s: float = 60.0,
        log_lines: int = 10,
    ) -> None:
        self.per_address, self.overall, self.window_s = per_address, overall, window_s
        self.log_lines = log_lines
        self._lock = threading.Lock()
        self._by_address: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._logged: deque[float] = deque()
        self._unlogged = 0
        self.refused = 0  # attempts answered 429, for the log at the end

    def _forget(self, now: float) -> None:
        since = now - self.window_s
        for times in (self._all, self._logged):
            while times and times[0] <= since:
                times.popleft()
        for address in [a for a, t in self._by_address.items() if t[-1] <= since]:
            del self._by_address[address]
        for times in self._by_address.values():
            while times[0] <= since:
                times.popleft()

    def retry_after(self, address: str, now: float) -> int:
        """0 if an attempt from ``address`` may be checked now; otherwise the whole seconds
        until one may (counted as refused)."""
        with self._lock:
            self._forget(now)
            waits = []
            mine = self._by_address.get(address)
            if mine is not None and len(mine) >= self.per_address:
                waits.append(mine[-self.per_address] + self.window_s - now)
            if len(self._all) >= self.overall:
                waits.append(self._all[-self.overall] + self.window_s - now)
            if not waits:
                return 0
            self.refused += 1
            return max(1, math.ceil(max(waits)))

    def failed(self, address: str, now: float) -> str | None:
        """Count a wrong token from ``address``; the warning line to log for it, or None when
        the log has had its share of lines in this window."""
        with self._lock:
            self._forget(now)
            mine = self._by_address.setdefault(address, deque())
            mine.append(now)
            self._all.append(now)
            if len(self._logged) >= self.log_lines:
                self._unlogged += 1
                return None
            self._logged.append(now)
            line = f"wrong admin token from {address}"
            if len(mine) >= self.per_address:
                line += (f" ({len(mine)} within {self.window_s:.0f} s: refusing its attempts "
                         "for a while)")  # fmt: skip
            elif len(self._all) >= self.overall:
                line += f" ({len(self._all)} from all addresses within {self.window_s:.0f} s: "
                line += "refusing every attempt for a while)"
            if self._unlogged:
                line += f"; {self._unlogged} more wrong token(s) not logged"
                self._unlogged = 0
            return line
