"""A device's time zone on the wire (``Capabilities.timezone``): one rule for the agent, which
checks the name it is configured with, and the server, which reads maintenance windows in it.

A zone is an IANA name (``Europe/Berlin``, ``UTC``) that this machine's zone data knows
(the OS's, else the ``tzdata`` package). An empty name is UTC: agents from before the field
report none.
"""

from __future__ import annotations

import functools
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["MAX_ZONE", "UTC", "zone_of"]

MAX_ZONE = 64
UTC = "UTC"
# Letters, digits and _ + - in /-separated parts: never an absolute path or "..".
_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,30}(/[A-Za-z0-9_+-]{1,30}){0,3}")


@functools.lru_cache(maxsize=512)
def zone_of(name: str) -> ZoneInfo | None:
    """The zone named ``name`` ("" is UTC), or None when it is no zone known here."""
    if not name:
        return ZoneInfo(UTC)
    if len(name) > MAX_ZONE or _ZONE.fullmatch(name) is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
