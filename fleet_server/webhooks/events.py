"""What operators are told about (the event types) and the bytes a webhook receives (payload
version 1), pure: no I/O.

A payload is one JSON object::

    {"version": 1, "id": "<uuid>", "type": "rollout.paused",
     "time": "2026-12-01T10:00:00Z", "fleet_id": "default", "data": {...}}

``id`` is the event's, the same in every attempt and for every replica that noticed it (a
receiver drops an id it has seen: delivery is at least once); ``time`` is when it happened, in
UTC. The bytes are canonical (sorted keys, no spaces), so every attempt sends the same body.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fleet_server.errors import BadRequestError

__all__ = [
    "PAYLOAD_VERSION",
    "Event",
    "EventType",
    "body",
    "event_id",
    "parse_types",
    "rfc3339",
]

PAYLOAD_VERSION = 1
# Event ids made from what identifies an event (uuid5 in this namespace) are the same on every
# replica that notices it.
_NAMESPACE = uuid.UUID("5b0c7f64-3f55-4a43-9a4e-6a0f5ad1c3e1")


class EventType(StrEnum):
    ROLLOUT_PAUSED = "rollout.paused"  # its failure gate tripped, or an admin paused it
    ROLLOUT_FAILED = "rollout.failed"  # ended without completing: aborted or rolled back
    ROLLOUT_COMPLETED = "rollout.completed"  # every wave reached its success threshold
    DEVICE_OFFLINE = "device.offline"  # offline and unheard for longer than the threshold
    BUDGET_REACHED = "budget.reached"  # a device's cloud spend today reached its budget
    EXPIRY_DUE = "expiry.due"  # a key, manifest or certificate expires within the warning
    UPDATE_REFUSED = "update.refused"  # a device refused or rolled back a release
    WEBHOOK_TEST = "webhook.test"  # `edgefleet webhooks test`


@dataclass(frozen=True)
class Event:
    """One thing that happened, as every webhook interested in its type gets it."""

    type: EventType
    data: Mapping[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    at: int = field(default_factory=lambda: int(time.time()))


def event_id(*parts: object) -> str:
    """The id of the event these parts identify (the same on every replica)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


def rfc3339(unix: float) -> str:
    """``unix`` as an RFC 3339 UTC time, to the second: 2026-12-01T10:00:00Z."""
    return datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(
    *, event_id: str, event_type: str, at: int, data: Mapping[str, Any], fleet_id: str
) -> bytes:
    """The payload of one event (version :data:`PAYLOAD_VERSION`), canonical JSON bytes."""
    payload = {
        "version": PAYLOAD_VERSION,
        "id": event_id,
        "type": event_type,
        "time": rfc3339(at),
        "fleet_id": fleet_id,
        "data": dict(data),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def parse_types(names: Iterable[str]) -> list[EventType]:
    """The event types a webhook asks for (none: every one), sorted, without repeats.

    Raises:
        BadRequestError: an unknown type (the message lists the known ones).
    """
    wanted: set[EventType] = set()
    for name in names:
        try:
            wanted.add(EventType(name.strip()))
        except ValueError:
            known = ", ".join(t.value for t in EventType)
            raise BadRequestError(f"unknown event type {name!r}; known: {known}") from None
    return sorted(wanted)
