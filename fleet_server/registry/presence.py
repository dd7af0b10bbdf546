"""One word for whether a device is there, the same on the CLI, the dashboard and the metrics.

The signals, strongest first:

- **revoked**: the admin revoked it; nothing else matters.
- **offline**: its MQTT session ended without a goodbye (the broker published its Will, or,
  on the embedded broker, which takes no Will from 3.1.1 clients, the server saw the
  connection end).
- **stopped**: the agent said goodbye (a clean shutdown).
- **online**: the agent announced itself when it connected.

The MQTT words can be stale: a server that was down when a device died never heard of it, and
a device that stopped and started again may not have reached the broker yet. So the last time
the device was heard at all (a check-in or a telemetry report) breaks the tie: "online" counts
only while the device was heard within :data:`STALE_S` (three check-in intervals), and a
"stopped" older than the device's last check-in means it runs again. A device without any MQTT
word is online while heard recently, else offline.

:func:`presence` and :func:`presence_sql` are the same rule in Python and in SQL (for counts by
word); a test holds them to each other.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from fleet_server.storage.schema import devices

__all__ = ["STALE_S", "WORDS", "heard_sql", "presence", "presence_sql"]

STALE_S = 3 * 30  # three of the server's check-in intervals (ServerContext.checkin_interval_s)
WORDS = ("revoked", "offline", "stopped", "online")


def presence(
    *,
    state: str | None,
    state_at: int | None,
    last_seen: int,
    last_report_at: int | None,
    revoked: bool,
    now: float,
) -> str:
    """The word for one device: its MQTT ``state`` (set at ``state_at``), its last check-in
    (``last_seen``; enrollment counts) and its last telemetry report."""
    heard = max(last_seen, last_report_at or 0)
    recent = now - heard <= STALE_S
    if revoked:
        return "revoked"
    if state == "offline":
        return "offline"
    if state == "stopped":
        return "online" if recent and heard > (state_at or 0) else "stopped"
    return "online" if recent else "offline"


def heard_sql() -> Any:
    """When a device was last heard at all (its last check-in or telemetry report), as a SQL
    expression over the devices table."""
    c = devices.c
    return sa.case(
        (sa.func.coalesce(c.last_telemetry_at, 0) > c.last_seen, c.last_telemetry_at),
        else_=c.last_seen,
    )


def presence_sql(now: float) -> Any:
    """:func:`presence` as a SQL expression over the devices table."""
    c = devices.c
    heard = heard_sql()
    recent = heard >= now - STALE_S
    started_again = recent & (heard > sa.func.coalesce(c.online_at, 0))
    return sa.case(
        (c.revoked_at.is_not(None), "revoked"),
        (c.online_state == "offline", "offline"),
        (
            c.online_state == "stopped",
            sa.case((started_again, "online"), else_="stopped"),
        ),
        (recent, "online"),
        else_="offline",
    )
