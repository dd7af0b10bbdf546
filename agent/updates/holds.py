"""Which desired releases the updater does not try at every check-in, and why: a hold per
envelope, with backoff for refusals that may heal (1 minute, doubling to 1 hour)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from protos import manifest_pb2

__all__ = ["HOLD_FIRST_S", "HOLD_MAX_S", "Hold", "peek", "reason_key"]

HOLD_FIRST_S = 60.0
HOLD_MAX_S = 3600.0


@dataclass(frozen=True)
class Hold:
    """A release not tried again before ``until`` (monotonic; None: until cleared)."""

    until: float | None
    attempts: int
    why: str


def reason_key(exc: Exception) -> str:
    """A refusal's reason without its numbers (the time now, bytes so far): the same reason
    is reported once."""
    return re.sub(r"\d+", "#", str(exc))


def peek(envelope: manifest_pb2.Envelope) -> tuple[str, str]:
    """Model name and version from an envelope, unverified: for reports and logs only."""
    manifest = manifest_pb2.Manifest()
    try:
        manifest.ParseFromString(envelope.payload)
    except Exception:  # noqa: BLE001 - a report about garbage still deserves a report
        return "", ""
    return manifest.model_name[:64], manifest.version[:32]
