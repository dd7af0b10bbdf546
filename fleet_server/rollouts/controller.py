"""The rollout controller: a server thread that moves every live rollout on.

Each server replica runs one; the row lock in :class:`RolloutStore.tick` makes their steps
safe to interleave (a scheduled rollout is started by one of them, once). Devices assigned in
a step are handed to ``nudge`` (an MQTT "check in now") so they do not wait for their next
poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from fleet_server.rollouts.schedule import LATE
from fleet_server.rollouts.store import RolloutStore
from fleet_server.storage.retrying import RetryLog

__all__ = ["RolloutController"]

log = logging.getLogger(__name__)


class RolloutController:
    """Ticks every ``interval_s`` seconds, and at once when :meth:`wake` is called."""

    def __init__(
        self,
        store: RolloutStore,
        interval_s: float = 2.0,
        nudge: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self._store = store
        self._interval = interval_s
        self._nudge = nudge
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)

    def start(self) -> None:
        """Start ticking."""
        self._thread.start()

    def wake(self) -> None:
        """Tick now (a rollout was created or resumed, or a device reported)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current tick."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # a server that failed to start never started it
            self._thread.join(timeout=10)

    def tick_all(self) -> int:
        """One step of every live rollout; return how many devices were assigned."""
        assigned_total = 0
        for rollout_id in self._store.ticking():
            decision, assigned = self._store.tick(rollout_id)
            if decision.action == "start" and decision.reason.startswith(LATE):
                log.warning("rollout %d: %s", rollout_id, decision.reason.removeprefix(LATE))
            elif decision.action == "start":
                log.info("rollout %d: %s", rollout_id, decision.reason)
            elif decision.action != "wait":
                log.info("rollout %d: %s %s", rollout_id, decision.action, decision.reason)
            if assigned:
                assigned_total += len(assigned)
                log.info("rollout %d: %d device(s) told to update", rollout_id, len(assigned))
                if self._nudge is not None:
                    try:
                        self._nudge(assigned)
                    except Exception:
                        log.exception("cannot nudge devices of rollout %d", rollout_id)
        return assigned_total

    def _run(self) -> None:
        retry = RetryLog(log, "move the rollouts on (rollout controller)")
        while not self._stop.is_set():
            try:
                assigned = self.tick_all()
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                retry.failed(exc)
                # Wakes (device reports) do not hurry a failing step: one try per interval.
                self._stop.wait(self._interval)
                continue
            retry.succeeded()
            if assigned:
                continue  # more may be waiting behind the concurrency cap
            self._wake.wait(self._interval)
            self._wake.clear()
