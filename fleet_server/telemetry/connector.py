"""The ingest's broker connection made in the background, so the server serves its admin and
device APIs at once: enrollment, check-ins, downloads and pushes need no broker, and a broker
that is slow to answer (or down at boot) must not keep them closed. Until it connects, commands
to devices answer "not connected" (the ingest's TransientError) and rollouts go on without
their MQTT nudge (devices check in on their own schedule).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from fleet_server.errors import TransientError

__all__ = ["Connector"]

log = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0
LAST_RETRY_S = 30.0


class Connector:
    """Calls ``connect`` (the ingest's start: connect, subscribe, start writing) in a thread
    until it succeeds or :meth:`stop` is called; retries with a growing, jittered pause."""

    def __init__(self, connect: Callable[[], None], disconnect: Callable[[], None], what: str):
        self._connect, self._disconnect, self._what = connect, disconnect, what
        self._stop = threading.Event()
        # Held during an attempt: a stop waits for it, then undoes what it made.
        self._attempt = threading.Lock()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-connect", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """Wait until connected; return whether it is (tests, and a start that wants it)."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        """No more attempts; disconnect what is connected (waits for an attempt under way, at
        most its connect timeout)."""
        self._stop.set()
        with self._attempt:
            self._disconnect()

    def _run(self) -> None:
        pause, failures = FIRST_RETRY_S, 0
        while not self._stop.is_set():
            with self._attempt:
                if self._stop.is_set():
                    return
                try:
                    self._connect()
                except TransientError as exc:
                    failures += 1
                    # The first failure, then every 10th: a broker down for hours is not
                    # thousands of lines.
                    if failures == 1 or failures % 10 == 0:
                        log.warning(
                            "%s: %s; retrying (every %.0f s at most), serving meanwhile "
                            "(attempt %d)", self._what, exc, LAST_RETRY_S, failures,
                        )  # fmt: skip
                else:
                    if failures:
                        log.info("%s: connected after %d failed attempt(s)", self._what, failures)
                    self._connected.set()
                    return
            self._stop.wait(pause * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not secrets
            pause = min(LAST_RETRY_S, pause * 2)
