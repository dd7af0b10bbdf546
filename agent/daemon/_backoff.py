"""Retry timing shared by the daemon's loops: capped exponential backoff with full jitter."""

from __future__ import annotations

import random

__all__ = ["MAX_BACKOFF_S", "backoff"]

MAX_BACKOFF_S = 300.0


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait before retry ``attempt``: uniform in 0..min(300, base * 2**attempt), so
    devices that lost their server together do not come back in step."""
    return random.uniform(0, min(MAX_BACKOFF_S, base * 2 ** min(attempt, 10)))  # noqa: S311
