"""systemd integration without libsystemd: sd_notify over $NOTIFY_SOCKET, the watchdog
interval, and journald-friendly logging.

With ``Type=notify`` the agent says ``READY=1`` once it serves (or is up with no model yet),
``STATUS=...`` when its state changes, ``WATCHDOG=1`` from its main loop while the engine is
healthy, and ``STOPPING=1`` on SIGTERM. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

__all__ = ["Notifier", "journal_logging", "setup_logging", "watchdog_interval"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
    namespace)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines; failures are logged, never raised (the service must not
        die because the manager is gone)."""
        if not self._address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def status(self, text: str) -> None:
        """``STATUS=`` once per change."""
        if text != self.last_status:
            self.last_status = text
            self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or None without one.

    ``$WATCHDOG_PID``, when set, must be this process.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald parses the prefix and adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def journal_logging(level: int) -> bool:
    """Log for journald when stderr is connected to it (``$JOURNAL_STREAM`` matches stderr's
    device and inode); returns whether it did."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(v) for v in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    if (stat.st_dev, stat.st_ino) != (device, inode):
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return True


def setup_logging(level: str) -> None:
    """Under systemd, journald adds timestamps and takes the priority from a <N> prefix;
    elsewhere humans want a timestamp and the level. (Both CLIs log this way.)"""
    if journal_logging(getattr(logging, level.upper())):
        return
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
