"""The engine's statistics and the agent's dependency footprint."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import InputError, ModelFileError, ModelNotFoundError, QueueFullError
from agent.inference.engine import Engine, load_model
from agent.inference.metrics import ModelMetrics, prometheus_text
from agent.inference.modelfile import inspect_model_file
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


@pytest.mark.slow
def test_the_agent_does_not_import_server_only_dependencies() -> None:
    code = (
        "import sys, agent.cli, agent.daemon, agent.updates.updater, agent.telemetry;"
        "import agent.hardware;"
        "bad = sorted(m for m in ('sqlalchemy', 'amqtt', 'fleet_server') if m in sys.modules);"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def _engine(budget: int = 0, workers: int = 1, queue_depth: int = 0) -> Engine:
    from agent.inference.engine import EngineOptions

    return Engine(
        EngineOptions(workers=workers, queue_depth=queue_depth, memory_budget_bytes=budget)
    )


def test_a_full_queue_is_refused_at_once_and_counted(color_models: Path) -> None:
    engine = _engine(workers=1, queue_depth=0)
    model = engine.load("heavy", "1", color_models / "heavy_float.tflite")
    engine.put(model)
    data = np.zeros((1, 224, 224, 3), dtype=np.float32)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            model.infer([data])

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        refused = 0
        for _ in range(2000):
            try:
                model.infer([data])
            except QueueFullError:
                refused += 1
                break
    finally:
        stop.set()
        worker.join()
    assert refused == 1
    assert model.stats.rejected == 1


def _callers(model: Any, count: int, requests: int) -> tuple[list[threading.Thread], list[Any]]:
    """``count`` started threads sending ``requests`` zeros each; the errors they met."""
    data = np.zeros((1, 224, 224, 3), dtype=np.float32)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(requests):
                model.infer([data])
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, errors


def test_two_workers_serve_two_requests_at_once(color_models: Path) -> None:
    engine = _engine(workers=2, queue_depth=0)
    model = engine.load("heavy", "1", color_models / "heavy_float.tflite")
    threads, errors = _callers(model, 2, 10)
    for t in threads:
        t.join()
    assert errors == []  # admission = 2 workers: neither thread was ever refused
    assert model.stats.requests == 20 and model.stats.rejected == 0


def test_a_deferred_load_serves_with_one_interpreter_and_grows_to_the_pool(
    color_models: Path,
) -> None:
    engine = _engine(workers=3, queue_depth=0)
    model = engine.load("heavy", "1", color_models / "heavy_float.tflite", deferred=True)
    assert (model.workers, model.target_workers) == (1, 3)
    full = engine.load("heavy", "1", color_models / "heavy_float.tflite")
    assert model.memory_bytes == full.memory_bytes  # the budget counts the grown pool
    # Admission follows the interpreters there are: one caller now, while the pool grows...
    threads, errors = _callers(model, 1, 5)
    assert model.grow() == 2  # while a request runs
    for t in threads:
        t.join()
    assert errors == [] and not model.saturated
    # ...three at once after, none refused.
    threads, errors = _callers(model, 3, 5)
    for t in threads:
        t.join()
    assert errors == [] and model.stats.requests == 20 and model.stats.rejected == 0
    assert (model.workers, model.target_workers, model.grow()) == (3, 3, 0)
    # An Edge TPU-style fixed pool (no spawn) never grows.
    assert full.grow() == 0 and full.workers == 3


def test_lazy_models_load_on_first_request_and_lru_eviction_keeps_the_budget(
    color_models: Path,
) -> None:
    floats, int8 = color_models / "color_float.tflite", color_models / "color_int8.tflite"
    one = inspect_model_file(floats)
    budget = one.size + one.activation_bytes + 1024  # room for about one model
    engine = _engine(budget=budget)
    engine.register("a", "1", floats, pinned=False)
    engine.register("b", "1", int8, pinned=False)
    assert [s.state for s in engine.index()] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert engine.get("a").version == "1"
    assert [s.state for s in engine.index()] == ["READY", "UNAVAILABLE"]
    engine.get("b")
    states = {s.name: (s.state, s.reason) for s in engine.index()}
    assert states["a"] == ("UNAVAILABLE", "evicted (memory budget)")
    assert states["b"][0] == "READY"
    assert engine.evictions == 1
    engine.get("a")  # comes back on demand
    assert engine.loads == 3 and engine.evictions == 2
    assert engine.memory_bytes() <= budget


def test_pinned_models_are_never_evicted(color_models: Path) -> None:
    floats, int8 = color_models / "color_float.tflite", color_models / "color_int8.tflite"
    engine = _engine(budget=1)  # nothing fits: the pinned model must still be served
    engine.put(engine.load("a", "1", floats), pinned=True)
    engine.register("b", "1", int8, pinned=False)
    engine.get("b")
    assert engine.peek("a") is not None and engine.evictions == 0


def test_a_model_that_cannot_load_fails_alone(color_models: Path) -> None:
    engine = _engine()
    engine.register("broken", "1", DATA / "invalid_model_invoking_error.tflite", pinned=False)
    engine.put(engine.load("good", "1", color_models / "color_float.tflite"))
    with pytest.raises(ModelFileError, match="unresolved custom op"):
        engine.get("broken")
    (status,) = [s for s in engine.index() if s.name == "broken"]
    assert status.state == "UNAVAILABLE" and "unresolved custom op" in status.reason
    assert engine.get("good").infer([np.zeros((1, 32, 32, 3), dtype=np.float32)])
    with pytest.raises(ModelNotFoundError):
        engine.get("nope")
    with pytest.raises(ModelNotFoundError, match="version '2'"):
        engine.get("good", "2")


def test_prometheus_text_has_counters_and_histograms(color_models: Path) -> None:
    engine = _engine()
    model = engine.load("colors", "1.0.0", color_models / "color_float.tflite")
    engine.put(model)
    for _ in range(3):
        model.infer([np.zeros((1, 32, 32, 3), dtype=np.float32)])
    text = prometheus_text(
        [(m.name, m.version, m.backend, m.stats) for m in engine.models()],
        {"loaded_models": 1.0},
    )
    labels = 'model="colors",version="1.0.0",backend="cpu"'
    assert f"edgefleet_inference_requests_total{{{labels}}} 3" in text
    assert f'edgefleet_inference_compute_seconds_bucket{{{labels},le="+Inf"}} 3' in text
    assert f"edgefleet_inference_queue_seconds_count{{{labels}}} 3" in text
    assert "edgefleet_engine_loaded_models 1" in text
    assert text.endswith("\n")


def test_an_unloaded_model_stays_unloaded_until_loaded_again(color_models: Path) -> None:
    engine = _engine()
    engine.put(engine.load("a", "1", color_models / "color_float.tflite"))
    assert engine.unload("a") and not engine.unload("missing")
    with pytest.raises(ModelNotFoundError, match="unloaded on request"):
        engine.get("a")
    assert engine.get("a", explicit_load=True).version == "1"
    assert engine.peek("a") is not None


def test_a_lazy_load_does_not_stall_other_models(color_models: Path) -> None:
    engine = _engine(workers=1, queue_depth=4)
    engine.put(engine.load("colors", "1", color_models / "color_float.tflite"))
    engine.register("heavy", "1", color_models / "heavy_float.tflite", pinned=False)
    gate = threading.Event()
    original = engine._loader

    def slow_loader(*args: Any) -> Any:
        gate.wait(5)  # a load that takes as long as the test wants
        return original(*args)

    engine._loader = slow_loader
    loader = threading.Thread(target=engine.get, args=("heavy",))
    loader.start()
    try:
        # While "heavy" is loading, "colors" answers at once.
        assert engine.get("colors").infer([np.zeros((1, 32, 32, 3), dtype=np.float32)])
        assert engine.peek("heavy") is None
    finally:
        gate.set()
        loader.join()
    assert engine.peek("heavy") is not None
