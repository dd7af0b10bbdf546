"""What keeps a check-in cheap when nothing changed: cached answers per fleet generation, and
last-seen times written in batches instead of once per call.

A device's answer depends on the fleet generation (bumped by every change to what devices
should run or who they are, and by refusal clears asked for or settled), on the device's
selection profile, on the signed key list, and on what the device reports running and
refusing.
While those are the same, the server answers from memory after one read of the generation; a
device that names the state version it already has gets a short "unchanged" answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from fleet_server.registry.store import DeviceStore
from fleet_server.storage.retrying import RetryLog
from protos import device_pb2

__all__ = ["AnswerCache", "CachedAnswer", "LastSeen", "state_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedAnswer:
    key: tuple[Any, ...]  # (generation, selection profile, key list digest)
    active: tuple[tuple[str, str], ...]  # the active versions the device reported
    response: bytes  # the serialized CheckInResponse, without per-call fields
    state_version: str
    # The refusals the device reported (None: it does not report them), and until when (unix
    # seconds) the answer may be given: its refusal clears expire.
    refusals: tuple[tuple[str, str], ...] | None = None
    valid_until: float = float("inf")


class AnswerCache:
    """Per-device cached answers, bounded (least recently used out first)."""

    def __init__(self, max_devices: int = 200_000) -> None:
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._max = max_devices
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, device_id: str) -> CachedAnswer | None:
        with self._lock:
            entry = self._entries.get(device_id)
            if entry is not None:
                self._entries.move_to_end(device_id)
            return entry

    def put(self, device_id: str, entry: CachedAnswer) -> None:
        with self._lock:
            self._entries[device_id] = entry
            self._entries.move_to_end(device_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


def _caps_json(raw: bytes) -> str:
    caps = device_pb2.Capabilities.FromString(raw)
    return json.dumps(MessageToDict(caps, preserving_proto_field_name=True), sort_keys=True)


def state_version(response: bytes) -> str:
    """The digest a device sends back to say which answer it acts on."""
    return hashlib.sha256(response).hexdigest()[:24]


class LastSeen:
    """Collects check-in times (and changed capabilities) and writes them every ``interval_s``
    seconds in one transaction, so check-ins do not each cost a database write."""

    def __init__(self, devices: DeviceStore, interval_s: float = 2.0) -> None:
        self._devices = devices
        self._interval = interval_s
        self._pending: dict[str, tuple[int, bytes | None]] = {}
        self._written_caps: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="last-seen", daemon=True)
        self._retry = RetryLog(log, "record check-ins")

    def start(self) -> None:
        self._thread.start()

    def note(self, device_id: str, capabilities: bytes | None) -> None:
        """A check-in now, with the device's serialized Capabilities when it sent them."""
        now = int(time.time())
        with self._lock:
            caps = capabilities
            if caps is not None and self._written_caps.get(device_id) == caps:
                caps = None
            previous = self._pending.get(device_id)
            if caps is None and previous is not None:
                caps = previous[1]
            self._pending[device_id] = (now, caps)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            self._devices.record_check_ins(
                {d: (at, None if c is None else _caps_json(c)) for d, (at, c) in pending.items()}
            )
        except Exception as exc:  # noqa: BLE001 - retried with the next flush
            self._retry.failed(exc, f"({len(pending)} device(s))")
            with self._lock:
                for device_id, value in pending.items():
                    self._pending.setdefault(device_id, value)
            return
        self._retry.succeeded()
        with self._lock:
            for device_id, (_t, caps) in pending.items():
                if caps is not None:
                    self._written_caps[device_id] = caps

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def stop(self) -> None:
        """Write what is pending and stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()
