"""MQTT topic layout shared by the agent (publisher) and the server (ingest).

All topics live under ``edgefleet/v1/<fleet>/<device>/``; see docs/mqtt.md.
"""

from __future__ import annotations

import re

from protos.names import is_name

__all__ = [
    "ROOT",
    "commands_topic",
    "device_from_topic",
    "device_name",
    "device_topic",
    "telemetry_filter",
    "telemetry_topic",
    "validate_segment",
]

ROOT = "edgefleet/v1"
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def device_name(requested: str) -> str:
    """A requested device name made safe as an id and a topic level (the server derives the
    device id from it; the device puts it in its CSR)."""
    # A name starts with a letter or digit (protos.names): a leading "_" goes too.
    name = _BAD_NAME_CHARS.sub("-", requested.strip())[:56].lstrip("-._").rstrip("-.")
    return name or "device"


def validate_segment(value: str, what: str) -> str:
    """Return ``value`` if it is safe as one topic level, else raise ValueError.

    Wildcards (``+``, ``#``), separators and empty levels would let one device publish into
    another's namespace, so ids are restricted to a conservative alphabet and 64 characters.
    """
    if not is_name(value):
        raise ValueError(
            f"{what} {value!r} is not usable in an MQTT topic: use 1-64 of A-Z a-z 0-9 _ . -"
        )
    return value


def telemetry_topic(fleet_id: str, device_id: str) -> str:
    """Topic a device publishes its periodic telemetry to."""
    fleet = validate_segment(fleet_id, "fleet id")
    device = validate_segment(device_id, "device id")
    return f"{ROOT}/{fleet}/{device}/telemetry"


def device_topic(fleet_id: str, device_id: str, kind: str) -> str:
    """``edgefleet/v1/<fleet>/<device>/<kind>`` for kind in telemetry, state, events, commands."""
    fleet = validate_segment(fleet_id, "fleet id")
    device = validate_segment(device_id, "device id")
    return f"{ROOT}/{fleet}/{device}/{kind}"


def commands_topic(fleet_id: str, device_id: str) -> str:
    """Topic the server publishes commands for one device to (the device subscribes)."""
    fleet = validate_segment(fleet_id, "fleet id")
    device = validate_segment(device_id, "device id")
    return f"{ROOT}/{fleet}/{device}/commands"


def telemetry_filter(fleet_id: str, share_group: str | None = None, kind: str = "telemetry") -> str:
    """Subscription filter for every device's ``kind`` messages in a fleet.

    With ``share_group`` the filter is an MQTT v5 shared subscription so that several server
    replicas split the messages instead of each receiving all of them.
    """
    base = f"{ROOT}/{validate_segment(fleet_id, 'fleet id')}/+/{kind}"
    if share_group:
        return f"$share/{validate_segment(share_group, 'share group')}/{base}"
    return base


def device_from_topic(topic: str) -> tuple[str, str, str] | None:
    """Split ``edgefleet/v1/<fleet>/<device>/<kind>`` into (fleet, device, kind), or None."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        return None
    fleet, device, kind = parts[2], parts[3], parts[4]
    if not (is_name(fleet) and is_name(device)):
        return None
    return fleet, device, kind
