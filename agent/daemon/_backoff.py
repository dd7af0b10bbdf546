"""Retry timing shared by the daemon's loops: capped exponential backoff with full jitter."""

from __future__ import annotations

import random

__all__ = ["MAX_BACKOFF_S", "UNREACHABLE_BACKOFF_S", "backoff"]

MAX_BACKOFF_S = 300.0
# A server that cannot be reached (a dead link, an outage) is tried at least this often: a
# link that comes back costs at most about a minute; full jitter still spreads a fleet's
# returns (10,000 devices: about 170 check-ins a second).
UNREACHABLE_BACKOFF_S = 60.0


def backoff(attempt: int, base: float, cap: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait before retry ``attempt``: uniform in 0..min(cap, base * 2**attempt), so
    devices that lost their server together do not come back in step."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 10)))  # noqa: S311
