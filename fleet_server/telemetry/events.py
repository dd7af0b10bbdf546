"""A device's events (update steps, command answers) as the server stores them, whichever way
they arrived (MQTT or the device API)."""

from __future__ import annotations

from typing import Any

from fleet_server.rollouts.outcomes import Outcome
from fleet_server.storage.db import stored_text
from protos import device_pb2
from protos.names import is_name, is_version

__all__ = ["event_row", "outcome_of"]


def event_row(message: Any, now: float) -> dict[str, Any]:
    """The device_events row of a DeviceEvent: a command's acknowledgement or an update step,
    at the device's time (no later than the server's)."""
    if message.HasField("ack"):
        ack = message.ack
        model_name = version = ""
        state = "ACK"
        detail = f"{ack.kind[:32]} {ack.id[:32]} {'done' if ack.ok else 'refused'}: {ack.detail}"
    else:
        update = message.update
        model_name, version, detail = update.model_name, update.version, update.detail
        state = (
            device_pb2.UpdateState.Name(update.state)
            if update.state in device_pb2.UpdateState.values() and update.state
            else "UNKNOWN"
        )
    return {
        "device_id": message.device_id,
        "at": min(int(message.sent_unix_ms // 1000), int(now)),
        "seq": message.seq,
        "model_name": stored_text(model_name, 64),
        "version": stored_text(version, 32),
        "state": stored_text(state, 16),
        "detail": stored_text(detail, 1024),
    }


def outcome_of(message: Any) -> Outcome | None:
    """The update step in a DeviceEvent, or None (a command answer, or names and states no
    agent sends)."""
    if not message.HasField("update"):
        return None
    update = message.update
    if (
        not is_name(update.model_name)
        or not is_version(update.version)
        or update.state not in device_pb2.UpdateState.values()
        or not update.state
    ):
        return None
    return Outcome(
        device_id=message.device_id,
        model_name=update.model_name,
        version=update.version,
        state=update.state,
        detail=stored_text(update.detail, 1024),
        epoch=message.epoch,
        seq=message.seq,
    )
