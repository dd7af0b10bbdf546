"""Ghost devices: enrolled, then never heard of (an agent killed before it saved its identity,
a device set up and thrown away). Rollouts select them and wait for them, and the device list
shows them forever; the main server process deletes each one ``--ghost-device-after`` seconds
after its enrollment and records it in the audit log. A device that checked in once, or sent
anything at all, is never one (:meth:`DeviceStore.delete_ghosts`)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from fleet_server.registry.store import DeviceStore, Ghost
from fleet_server.storage.retrying import RetryLog

__all__ = ["AuditSink", "GhostReaper", "sweep_interval"]

log = logging.getLogger(__name__)
_BATCH = 100  # ghosts deleted per transaction


class AuditSink(Protocol):
    """Where deletions are recorded (the audit log)."""

    def append(
        self, actor: str, action: str, target: str, detail: str, *, ok: bool, error: str = ""
    ) -> None: ...


def sweep_interval(after_s: float) -> float:
    """Seconds between looks for ghosts: a tenth of the age that makes one, within 1..60 s (a
    ghost lives at most 10% longer than configured, at one small query a minute)."""
    return min(60.0, max(1.0, after_s / 10))


class GhostReaper:
    """Deletes ghost devices older than ``after_s`` seconds (0: never), on a thread of its own."""

    def __init__(
        self,
        devices: DeviceStore,
        audit: AuditSink,
        *,
        after_s: float,
        on_deleted: Callable[[], None] | None = None,
    ) -> None:
        """``on_deleted``: called after a sweep that deleted any (the CRL is written again)."""
        self._devices = devices
        self._on_deleted = on_deleted
        self._audit = audit
        self._after_s = after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ghost-devices", daemon=True)

    def start(self) -> None:
        """Start looking (nothing to do when deleting ghosts is off)."""
        if self._after_s > 0:
            self._thread.start()

    def stop(self) -> None:
        """Stop looking and wait for a sweep in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sweep(self, now: float | None = None) -> list[Ghost]:
        """Delete the ghosts of ``now`` (default: the time now), audit and log each one."""
        now = time.time() if now is None else now
        deleted: list[Ghost] = []
        while True:  # in batches: a big leftover from before never holds the lock for long
            batch = self._devices.delete_ghosts(int(now - self._after_s), limit=_BATCH)
            for ghost in batch:
                age = int(now) - ghost.enrolled_at
                self._audit.append(
                    "server",
                    "DeleteGhostDevice",
                    ghost.device_id,
                    json.dumps(
                        {
                            "name": ghost.name,
                            "enrolled_at": ghost.enrolled_at,
                            "labels": ghost.labels,
                            "reason": f"enrolled {age} s ago and never checked in "
                            f"(--ghost-device-after {self._after_s:g})",
                        },
                        sort_keys=True,
                    ),
                    ok=True,
                )
                log.warning(
                    "deleted device %s: enrolled %d s ago and never checked in (a ghost)",
                    ghost.device_id,
                    age,
                )
            deleted += batch
            if len(batch) < _BATCH or self._stop.is_set():
                if deleted and self._on_deleted is not None:
                    self._on_deleted()
                return deleted

    def _run(self) -> None:
        interval = sweep_interval(self._after_s)
        retry = RetryLog(log, "delete ghost devices")
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - a database that is away now is there at the next sweep
                retry.failed(exc)
            else:
                retry.succeeded()
