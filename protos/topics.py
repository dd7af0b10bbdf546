"""MQTT topic layout shared by the agent (publisher) and the server (ingest).

All topics live under ``edgefleet/v1/<fleet>/<device>/``; see docs/mqtt.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from protos.names import is_name

__all__ = [
    "DEVICE_RIGHTS",
    "ROOT",
    "SERVER_IDENTITY",
    "commands_topic",
    "device_from_topic",
    "device_name",
    "device_topic",
    "is_server_identity",
    "may_publish",
    "may_subscribe",
    "mosquitto_acl",
    "retain_allowed",
    "server_identity",
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


# Who may do what, one definition for both brokers (the embedded broker checks it per packet;
# mosquitto gets it as the ACL file mosquitto_acl() writes). An identity is a client
# certificate's common name: a device id (names never hold ":"), or a server process's
# "edgefleet:server:<name>".
SERVER_IDENTITY = "edgefleet:server"
# What a device may do on its own topics: publish its reports, read its commands. Nothing else
# of anybody's: not another device's topics, not a wildcard, not a command.
DEVICE_RIGHTS: dict[str, str] = {
    "telemetry": "write",
    "events": "write",
    "state": "write",
    "commands": "read",
}


def server_identity(name: str) -> str:
    """The identity (certificate CN, MQTT user and client id) of the server process ``name``."""
    return f"{SERVER_IDENTITY}:{validate_segment(name, 'server name')}"


def is_server_identity(identity: str) -> bool:
    prefix, sep, name = identity.rpartition(":")
    return bool(sep) and prefix == SERVER_IDENTITY and is_name(name)


def _under_root(topic: str) -> bool:
    return topic == ROOT or topic.startswith(f"{ROOT}/")


def may_publish(identity: str, topic: str, fleet: str) -> bool:
    """Whether ``identity`` may publish to ``topic`` in ``fleet`` (never a wildcard, never
    another fleet's level: a made-up fleet would be a namespace of the device's own)."""
    if "+" in topic or "#" in topic:
        return False
    parts = device_from_topic(topic)
    if parts is None or parts[0] != fleet:
        return False
    if is_server_identity(identity):
        return parts[2] == "commands"
    return parts[1] == identity and DEVICE_RIGHTS.get(parts[2]) == "write"


def may_subscribe(identity: str, topic_filter: str, fleet: str) -> bool:
    """Whether ``identity`` may subscribe to ``topic_filter`` in ``fleet`` (a server may share
    it: ``$share/<group>/...``)."""
    if is_server_identity(identity):
        levels = topic_filter.split("/")
        if levels[0] == "$share" and len(levels) > 2 and is_name(levels[1]):
            levels = levels[2:]
        fleet_root = f"{ROOT}/{fleet}".split("/")
        if levels[: len(fleet_root)] != fleet_root:
            return False
        return "#" not in levels[:-1] and all(
            level in ("+", "#") or is_name(level) for level in levels[len(fleet_root) :]
        )
    parts = device_from_topic(topic_filter)
    return (
        parts is not None
        and parts[0] == fleet
        and parts[1] == identity
        and DEVICE_RIGHTS.get(parts[2]) == "read"
    )


def retain_allowed(topic: str) -> bool:
    """Only a device's state is kept by the broker (its birth, Will and goodbye); a retained
    flag anywhere else is cleared, so no device can make the broker keep its reports."""
    parts = device_from_topic(topic)
    return parts is not None and parts[2] == "state"


def mosquitto_acl(fleet: str, server_names: Sequence[str]) -> str:
    """The mosquitto ACL file of the rules above for ``fleet``, for servers named
    ``server_names`` (mosquitto has no wildcard user: each server process's identity is
    listed)."""
    fleet = validate_segment(fleet, "fleet id")
    lines = [
        "# EdgeFleet MQTT ACL for mosquitto, written by protos.topics.mosquitto_acl()",
        "# (`edgefleet-server broker-cert --server-name NAME ...` writes it for your fleet and",
        "# servers). The user name is the client certificate's common name: a device id for",
        f"# devices (ids never contain ':'), {SERVER_IDENTITY}:<name> for each fleet server.",
        "",
        f"# Every device of fleet {fleet}: its own topics only.",
    ]
    for kind, right in DEVICE_RIGHTS.items():
        lines.append(f"pattern {right} {ROOT}/{fleet}/%u/{kind}")
    lines += [
        "",
        "# Each fleet server: reads everything of the fleet; the only ones that send commands.",
    ]
    for name in server_names:
        lines += [
            f"user {server_identity(name)}",
            f"topic read {ROOT}/{fleet}/#",
            f"topic write {ROOT}/{fleet}/+/commands",
        ]
    return "\n".join(lines) + "\n"
