"""Per-model metrics: counters, latency histograms, recent-latency percentiles, Prometheus text."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["BUCKETS_MS", "Histogram", "ModelMetrics", "StatsWindow", "prometheus_text"]

# Upper bounds in milliseconds; a sub-millisecond TPU model and a second-long CPU model both fit.
BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0)
_RECENT = 4096  # most recent latencies kept per model for percentiles


class Histogram:
    """A cumulative histogram with fixed buckets (Prometheus semantics)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value_ms: float) -> None:
        """Add one observation (caller holds the owner's lock)."""
        self.counts[bisect.bisect_left(BUCKETS_MS, value_ms)] += 1
        self.total += value_ms
        self.count += 1


@dataclass(frozen=True)
class StatsWindow:
    """A model's totals, requests since the previous report, and recent latency percentiles."""

    requests_total: int
    errors_total: int
    window_requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    window_errors: int = 0
    window_compute_ms: float = 0.0


class ModelMetrics:
    """Everything measured about one model, safe to update from many threads.

    Percentiles for telemetry cover the last ``_RECENT`` successful requests rather than only
    those since the previous report, so a device with sparse traffic still reports a meaningful
    latency; ``window_requests`` says how many requests the last interval saw.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.rejected = 0
        self.invalid = 0  # refused by the model's input validation (not the model's errors)
        self.in_flight = 0
        self.success_ms = 0.0  # queue + compute of the requests that returned a result
        self.fail_ms = 0.0  # ... of those that failed while running
        self.last_inference = 0.0  # wall clock of the last request finished (0: none)
        self.queue_ms = Histogram()
        self.compute_ms = Histogram()
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self._window_requests = 0
        self._window_errors = 0
        self._window_compute_ms = 0.0
        self._progress = time.monotonic()  # last start from idle, or last finish

    def started(self) -> None:
        with self._lock:
            if self.in_flight == 0:
                self._progress = time.monotonic()
            self.in_flight += 1

    def stuck_for(self) -> float:
        """Seconds the model has had requests in flight without finishing any (0 when idle)."""
        with self._lock:
            return time.monotonic() - self._progress if self.in_flight else 0.0

    def finished(self, queue_ms: float, compute_ms: float, *, ok: bool) -> None:
        """Count one request that got an interpreter (ok or failed while running)."""
        with self._lock:
            self.in_flight -= 1
            self._progress = time.monotonic()
            self.requests += 1
            self._window_requests += 1
            self.queue_ms.observe(queue_ms)
            self._window_compute_ms += compute_ms
            self.last_inference = time.time()
            if ok:
                self.success_ms += queue_ms + compute_ms
                self.compute_ms.observe(compute_ms)
                self._recent.append(queue_ms + compute_ms)
            else:
                self.fail_ms += queue_ms + compute_ms
                self.errors += 1
                self._window_errors += 1

    def reject(self) -> None:
        """Count a request refused because the model's queue was full."""
        with self._lock:
            self.requests += 1
            self.errors += 1
            self.rejected += 1
            self._window_requests += 1
            self._window_errors += 1

    def refused_input(self) -> None:
        """Count a request its model's input validation refused: the client's fault, so
        neither a request the model ran nor an error of it (a rollout's health gate reads
        those)."""
        with self._lock:
            self.invalid += 1

    def gave_up(self) -> None:
        """Count a started request that found no free interpreter in time (a rejection)."""
        with self._lock:
            self.in_flight -= 1
            self.requests += 1
            self.errors += 1
            self.rejected += 1
            self._window_requests += 1
            self._window_errors += 1

    def record(self, latency_ms: float, *, ok: bool) -> None:
        """Count one request measured as a whole (no queue)."""
        self.started()
        self.finished(0.0, latency_ms, ok=ok)

    def take_window(self) -> StatsWindow:
        """Return totals and recent latency percentiles, and restart the request interval."""
        with self._lock:
            samples = np.fromiter(self._recent, dtype=np.float64)
            window, window_errors = self._window_requests, self._window_errors
            compute = self._window_compute_ms
            self._window_requests = self._window_errors = 0
            self._window_compute_ms = 0.0
            requests, errors = self.requests, self.errors
        if samples.size:
            p50, p95, p99 = (float(v) for v in np.percentile(samples, [50, 95, 99]))
            mean = float(samples.mean())
        else:
            p50 = p95 = p99 = mean = 0.0
        return StatsWindow(requests, errors, window, p50, p95, p99, mean, window_errors, compute)

    def snapshot(self) -> ModelMetrics:
        """A consistent copy, for rendering without holding the lock."""
        copy = ModelMetrics()
        with self._lock:
            copy.requests, copy.errors = self.requests, self.errors
            copy.rejected, copy.in_flight = self.rejected, self.in_flight
            copy.invalid = self.invalid
            copy.success_ms, copy.fail_ms = self.success_ms, self.fail_ms
            copy.last_inference = self.last_inference
            for name in ("queue_ms", "compute_ms"):
                source, target = getattr(self, name), getattr(copy, name)
                target.counts, target.total, target.count = (
                    list(source.counts),
                    source.total,
                    source.count,
                )
        return copy

    def recent_p50(self) -> float:
        """Median of the recent successful latencies in ms (0.0 without any)."""
        with self._lock:
            samples = np.fromiter(self._recent, dtype=np.float64)
        return float(np.median(samples)) if samples.size else 0.0

    def recent_percentiles(self) -> tuple[float, float, float]:
        """p50, p95 and p99 of the recent successful latencies in ms (zeros without any),
        without restarting the report's interval as :meth:`take_window` does."""
        with self._lock:
            samples = np.fromiter(self._recent, dtype=np.float64)
        if not samples.size:
            return 0.0, 0.0, 0.0
        p50, p95, p99 = (float(v) for v in np.percentile(samples, [50, 95, 99]))
        return p50, p95, p99

    def recent_count(self) -> int:
        with self._lock:
            return len(self._recent)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _histogram_lines(name: str, labels: str, hist: Histogram) -> list[str]:
    lines = []
    cumulative = 0
    for bound, count in zip((*BUCKETS_MS, float("inf")), hist.counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound / 1000:g}"
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
    lines.append(f"{name}_sum{{{labels}}} {hist.total / 1000:.6f}")
    lines.append(f"{name}_count{{{labels}}} {hist.count}")
    return lines


_COUNTERS = (
    ("requests_total", "counter", "Inference requests.", "requests"),
    ("errors_total", "counter", "Failed or rejected requests.", "errors"),
    (
        "rejected_total",
        "counter",
        "Requests refused at admission: the model's places full, or the app over its share.",
        "rejected",
    ),
    (
        "invalid_total",
        "counter",
        "Requests refused by the model's input validation ([validation.MODEL]).",
        "invalid",
    ),
    ("in_flight", "gauge", "Requests queued or running.", "in_flight"),
)
_HISTOGRAMS = (
    ("queue_seconds", "Time waiting for a free interpreter.", "queue_ms"),
    ("compute_seconds", "Time running the model.", "compute_ms"),
)


def prometheus_text(
    models: Iterable[tuple[str, str, str, ModelMetrics]], engine_gauges: dict[str, float]
) -> str:
    """Render metrics in the Prometheus text exposition format (version 0.0.4).

    ``models`` yields (name, version, backend, metrics) per loaded model.
    """
    rows = []
    for name, version, backend, metrics in models:
        labels = f'model="{_label(name)}",version="{_label(version)}",backend="{_label(backend)}"'
        rows.append((labels, metrics.snapshot()))
    lines: list[str] = []
    for suffix, kind, text, attr in _COUNTERS:
        metric = f"edgefleet_inference_{suffix}"
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        lines += [f"{metric}{{{labels}}} {getattr(snap, attr)}" for labels, snap in rows]
    for suffix, text, attr in _HISTOGRAMS:
        metric = f"edgefleet_inference_{suffix}"
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} histogram"]
        for labels, snap in rows:
            lines += _histogram_lines(metric, labels, getattr(snap, attr))
    for key, value in sorted(engine_gauges.items()):
        lines += [f"# TYPE edgefleet_engine_{key} gauge", f"edgefleet_engine_{key} {value:g}"]
    return "\n".join(lines) + "\n"
