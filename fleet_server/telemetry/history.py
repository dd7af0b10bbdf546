"""Telemetry over time, at most one database row per device, model and bucket.

Devices report every few seconds; writing each report as a history row would multiply the
ingest's writes. Instead the ingest adds each report's window counts to an open bucket in
memory and writes a bucket once it has ended (and whatever is open when the server stops), so
a device-model costs one history row per :data:`HISTORY_BUCKET_S` whatever its report rate.
A server killed with SIGKILL loses at most the open buckets' history; the usage the cost
reports are made of is written with every batch and is not affected.

Pure bookkeeping: the caller writes the rows and then confirms them (:meth:`HistoryBuffer.
written`), so a failed write leaves them buffered for the next attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleet_server.telemetry.checks import plausible

__all__ = ["HISTORY_BUCKET_S", "HistoryBuffer"]

# Telemetry over time is kept in fixed buckets of this many seconds (the history tables).
HISTORY_BUCKET_S = 300
_MAX_OPEN = 200_000  # buckets held in memory; beyond it they are written early (rows add up)
_FUTURE_S = 300  # a report stamped further ahead than this is filed under the receive time


@dataclass
class _Bucket:
    requests: int = 0
    errors: int = 0
    cloud_requests: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    at_ms: int = -1  # the send time of the report whose latency is kept


class HistoryBuffer:
    """Open history buckets of a retention of ``hours`` (0: keep no history)."""

    def __init__(self, hours: float) -> None:
        if not 0 <= hours <= 24 * 366:
            raise ValueError(f"history of {hours} hours is outside 0..{24 * 366}")
        self.retention_s = int(hours * 3600)
        self._open: dict[tuple[str, str, int], _Bucket] = {}
        self._pruned_at = 0  # the bucket history was last pruned in
        self._earliest = math.inf  # the oldest open bucket

    def add(self, report: Any, now: float) -> None:
        """File a telemetry report's window under the bucket of its send time (the receive
        time when the device's clock is ahead or the report older than the retention)."""
        if not self.retention_s:
            return
        sent = report.sent_unix_ms / 1000
        if not now - self.retention_s <= sent <= now + _FUTURE_S:
            sent = now
        bucket = int(sent) // HISTORY_BUCKET_S * HISTORY_BUCKET_S
        for model in report.models:
            if not plausible(model):
                continue  # numbers no device measured; the rest of the report still counts
            latency = model.latency
            key = (report.device_id, model.model_name, bucket)
            self._earliest = min(self._earliest, bucket)
            entry = self._open.setdefault(key, _Bucket())
            entry.requests += model.window_requests
            entry.errors += model.window_errors
            entry.cloud_requests += model.window_cloud_requests
            if report.sent_unix_ms >= entry.at_ms:
                entry.p50_ms = max(0.0, min(latency.p50_ms, 1e7))
                entry.p95_ms = max(0.0, min(latency.p95_ms, 1e7))
                entry.at_ms = report.sent_unix_ms

    def due(self, now: float, *, everything: bool = False) -> list[dict[str, Any]]:
        """Rows of the buckets that have ended (every open one with ``everything``, or when
        too many are open), without forgetting them: see :meth:`written`."""
        current = int(now) // HISTORY_BUCKET_S * HISTORY_BUCKET_S
        flush_all = everything or len(self._open) > _MAX_OPEN
        if not flush_all and self._earliest >= current:
            return []  # the common case, without looking at every open bucket
        return [
            {
                "device_id": device_id,
                "model_name": model_name,
                "bucket": bucket,
                "requests": b.requests,
                "errors": b.errors,
                "cloud_requests": b.cloud_requests,
                "p50_ms": b.p50_ms,
                "p95_ms": b.p95_ms,
            }
            for (device_id, model_name, bucket), b in self._open.items()
            if flush_all or bucket < current
        ]

    def written(self, rows: list[dict[str, Any]]) -> None:
        """Forget buckets that are now in the database."""
        for row in rows:
            self._open.pop((row["device_id"], row["model_name"], row["bucket"]), None)
        if rows:
            self._earliest = min((key[2] for key in self._open), default=math.inf)

    def prune_before(self, now: float) -> int:
        """The bucket before which stored history is to be deleted, once per bucket (0 when
        there is nothing new to prune); everything with a retention of 0."""
        current = int(now) // HISTORY_BUCKET_S * HISTORY_BUCKET_S
        if current == self._pruned_at:
            return 0
        return current - self.retention_s if self.retention_s else current + HISTORY_BUCKET_S

    def pruned(self, now: float) -> None:
        self._pruned_at = int(now) // HISTORY_BUCKET_S * HISTORY_BUCKET_S

    def __len__(self) -> int:
        return len(self._open)
