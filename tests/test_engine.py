"""The engine's statistics and the agent's dependency footprint."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from agent.errors import InputError
from agent.inference.engine import Engine, load_model
from agent.inference.metrics import ModelMetrics
from tests.harness import DATA


def test_stats_count_requests_errors_and_recent_percentiles() -> None:
    stats = ModelMetrics()
    for ms in range(1, 101):
        stats.record(float(ms), ok=True)
    stats.record(5.0, ok=False)
    first = stats.take_window()
    assert (first.requests_total, first.errors_total, first.window_requests) == (101, 1, 101)
    assert first.p50_ms == pytest.approx(50.5)
    assert first.p99_ms == pytest.approx(99.01)
    second = stats.take_window()
    assert second.window_requests == 0 and second.requests_total == 101
    assert second.p50_ms == pytest.approx(50.5)  # recent latencies survive a quiet interval


def test_latency_memory_is_bounded() -> None:
    stats = ModelMetrics()
    for _ in range(20_000):
        stats.record(1.0, ok=True)
    assert stats.recent_count() == 4096


def test_loaded_model_checks_inputs_and_counts() -> None:
    model = load_model(DATA / "mobilenet_v1_0.25_128_quant.tflite", "m", "1.0.0")
    engine = Engine()
    assert engine.put(model) is None
    out = model.infer([np.zeros((1, 128, 128, 3), dtype=np.uint8)])
    assert out[0].shape == (1, 1001)
    with pytest.raises(InputError, match="shape"):
        model.infer([np.zeros((1, 64, 64, 3), dtype=np.uint8)])
    with pytest.raises(InputError, match="is uint8, got float32"):
        model.infer([np.zeros((1, 128, 128, 3), dtype=np.float32)])
    model.infer([np.zeros((1, 128, 128, 3), dtype=np.uint8)], record=False)
    assert model.stats.take_window().requests_total == 1


def test_the_agent_does_not_import_server_only_dependencies() -> None:
    code = (
        "import sys, agent.cli, agent.daemon, agent.updates.updater, agent.telemetry;"
        "bad = sorted(m for m in ('sqlalchemy', 'amqtt', 'fleet_server') if m in sys.modules);"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
