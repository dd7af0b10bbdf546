"""How a server's background loop reports a step that keeps failing.

During a database outage every loop (the rollout controller, the check-in recorder, the ghost
sweep) fails at each step; a traceback per step buried the log (the 30-minute soak of issue 19
logged one every 0.5 s, 100 lines each). ``RetryLog`` logs the first failure and then one line
a minute while failures go on, a database that is unreachable or busy as one line without a
traceback, anything else with its traceback, and one line when the step succeeds again. A
step that fails and works by turns (a database refusing now and then) is no louder: at most
one failure a minute.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

__all__ = ["RetryLog", "unreachable"]

# The database down, cut off, or busy past its lock timeout: retried, not a defect to trace.
_UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.PendingRollbackError,
                sa.exc.TimeoutError)  # fmt: skip


def unreachable(exc: BaseException) -> str | None:
    """The one-line cause when ``exc`` says the database is unreachable or busy, else None.

    A session PostgreSQL ended (idle in transaction past its timeout: an InternalError, SQLSTATE
    25P03) invalidates the connection: lost like a cut link, as the API's errors treat it."""
    lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    if not (isinstance(exc, _UNREACHABLE) or lost):
        return None
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class RetryLog:
    """The log of one retried step (``what``: "record 3 check-ins", ...); not thread-safe (one
    loop owns it)."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 60.0) -> None:
        self._log = logger
        self._what = what
        self._every = every_s
        self._since: float | None = None
        self._logged = float("-inf")  # kept across successes: a flapping step is no louder
        self._told = False  # this run of failures was logged (so its end is too)
        self.failures = 0  # since the last success

    def failed(self, exc: BaseException, detail: str = "") -> None:
        """The step failed with ``exc`` (call from its ``except`` block)."""
        now = time.monotonic()
        self.failures += 1
        self._since = now if self._since is None else self._since
        if now - self._logged < self._every:
            return
        self._logged, self._told = now, True
        what = f"{self._what} {detail}".strip()
        cause = unreachable(exc)
        if cause is not None:
            self._log.warning("cannot %s: the fleet database is unreachable or busy (%s); "
                              "retrying", what, cause)  # fmt: skip
        else:
            self._log.exception("cannot %s; retrying", what)

    def succeeded(self) -> None:
        """The step succeeded (after logged failures, says so once)."""
        if self._since is not None and self._told:
            self._log.info("%s: works again after %d failure(s) in %.0f s", self._what,
                           self.failures, time.monotonic() - self._since)  # fmt: skip
        self._since, self._told, self.failures = None, False, 0
