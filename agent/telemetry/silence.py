"""Telling when the agent cannot publish: once when it has been silent too long, once when it
publishes again, never in between (a device cut off for a day must not fill its log)."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["SILENT_AFTER_S", "SilenceWatch"]

log = logging.getLogger(__name__)
SILENT_AFTER_S = 60.0  # at least this long unable to publish before the agent says so


class SilenceWatch:
    """Follows whether the MQTT session is up; calls ``on_silence(why)`` once the agent has
    been unable to publish for three report intervals (at least :data:`SILENT_AFTER_S`), and
    ``on_silence(None)`` once it publishes again (or the session ends)."""

    def __init__(self, on_silence: Callable[[str | None], None], now: float) -> None:
        self._on_silence = on_silence
        self._heard = now
        self.silent = False

    def update(
        self, *, connected: bool, now: float, interval_s: float, endpoint: str, spooled: int
    ) -> None:
        if connected:
            self._heard = now
            if self.silent:
                log.info("telemetry: publishing to %s again", endpoint)
                self.silent = False
                self._on_silence(None)
            return
        waited = now - self._heard
        if not self.silent and waited >= max(SILENT_AFTER_S, 3 * interval_s):
            why = f"telemetry: cannot publish to {endpoint} for {waited:.0f} s"
            log.warning("%s; %d message(s) spooled, serving goes on", why, spooled)
            self.silent = True
            self._on_silence(why)

    def close(self) -> None:
        """The session ends: whatever was said about it no longer holds."""
        if self.silent:
            self.silent = False
            self._on_silence(None)
