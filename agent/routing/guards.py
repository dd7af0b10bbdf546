"""What keeps cloud calls in bounds: a circuit breaker and budgets. Pure, with the clock passed
in, so they are property-tested without waiting."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from agent.routing.policy import Policy

__all__ = ["Breaker", "Budget"]


@dataclass
class Breaker:
    """Opens after ``failures`` consecutive cloud failures; after ``cooldown_s`` lets one
    request through (half-open): its success closes the breaker, its failure re-opens it."""

    failures: int = 5
    cooldown_s: float = 30.0
    _consecutive: int = 0
    _opened_at: float | None = None
    _probing: bool = False

    def allow(self, now: float) -> str:
        """ "" when a cloud call may go ahead, else why not."""
        if self._opened_at is None:
            return ""
        if self._probing or now - self._opened_at < self.cooldown_s:
            wait = max(0.0, self.cooldown_s - (now - self._opened_at))
            return f"circuit open after {self._consecutive} cloud failures (retry in {wait:.0f} s)"
        self._probing = True  # half-open: this one call tests the cloud
        return ""

    def record(self, ok: bool, now: float) -> None:
        self._probing = False
        if ok:
            self._consecutive = 0
            self._opened_at = None
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._opened_at = now

    @property
    def open(self) -> bool:
        return self._opened_at is not None


@dataclass
class Budget:
    """Cloud requests per minute (sliding 60 s) and spend per UTC day, for one model."""

    _calls: deque[float] = field(default_factory=deque)
    _day: int = -1
    spent_today: float = 0.0

    def allow(self, policy: Policy, now: float) -> str:
        """ "" when one more cloud call fits the policy's budgets, else why not."""
        while self._calls and now - self._calls[0] >= 60.0:
            self._calls.popleft()
        if policy.max_per_minute is not None and len(self._calls) >= policy.max_per_minute:
            return f"budget: {policy.max_per_minute} cloud requests per minute used"
        self._roll(now)
        limit = policy.max_spend_per_day
        if limit is not None and self.spent_today + policy.cloud_cost > limit + 1e-12:
            return f"budget: {self.spent_today:.4f} of {limit:g} USD spent today"
        return ""

    def spend(self, policy: Policy, now: float) -> None:
        """Count one cloud call that was made."""
        self._calls.append(now)
        if policy.max_per_minute is not None:
            while len(self._calls) > max(policy.max_per_minute, 1):
                self._calls.popleft()
        self._roll(now)
        self.spent_today += policy.cloud_cost

    def _roll(self, now: float) -> None:
        day = int(now // 86400)
        if day != self._day:
            self._day, self.spent_today = day, 0.0


def utc_now() -> float:
    return time.time()
