"""Loaded models and the statistics the agent reports about them.

A TFLite interpreter is not thread-safe, so each loaded model owns one interpreter behind a lock;
concurrent requests for the same model queue on that lock. (Worker pools with one interpreter
per worker come with the inference-engine issue.)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import InferenceError, InputError, ModelFileError, UnsupportedModelError
from agent.inference.modelfile import ModelInfo, inspect_model_file
from agent.inference.runtime import find_runtime

__all__ = ["Engine", "LoadedModel", "ModelStats", "StatsWindow", "load_model"]

_LATENCY_WINDOW = 4096  # most recent latencies kept per model for percentiles


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


@dataclass
class ModelStats:
    """Counters since start and the latencies of the most recent requests (bounded).

    Percentiles cover the last ``_LATENCY_WINDOW`` successful requests rather than only those
    since the previous report, so a device with sparse traffic still reports a meaningful
    latency; ``window_requests`` says how many requests the last interval saw.
    """

    requests: int = 0
    errors: int = 0
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    _window_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency_ms: float, *, ok: bool) -> None:
        """Count one request and, if it succeeded, its latency."""
        with self._lock:
            self.requests += 1
            self._window_requests += 1
            if ok:
                self._latencies.append(latency_ms)
            else:
                self.errors += 1

    def take_window(self) -> StatsWindow:
        """Return totals and recent latency percentiles, and restart the request interval."""
        with self._lock:
            samples = np.fromiter(self._latencies, dtype=np.float64)
            window = self._window_requests
            self._window_requests = 0
            requests, errors = self.requests, self.errors
        if samples.size:
            p50, p95, p99 = (float(v) for v in np.percentile(samples, [50, 95, 99]))
            mean = float(samples.mean())
        else:
            p50 = p95 = p99 = mean = 0.0
        return StatsWindow(requests, errors, window, p50, p95, p99, mean)


class LoadedModel:
    """One model with its interpreter, ready to run."""

    def __init__(
        self, name: str, version: str, path: Path, info: ModelInfo, interpreter: Any
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.info = info
        self.backend = "cpu"
        self.stats = ModelStats()
        self._interpreter = interpreter
        self._lock = threading.Lock()
        self._input_index = [int(d["index"]) for d in interpreter.get_input_details()]
        self._output_index = [int(d["index"]) for d in interpreter.get_output_details()]

    def infer(self, inputs: Sequence[np.ndarray], *, record: bool = True) -> list[np.ndarray]:
        """Run the model on ``inputs`` (one array per graph input, in order).

        ``record=False`` keeps internal runs (smoke tests) out of the reported statistics.

        Raises:
            InputError: wrong number, dtype or shape of inputs.
            InferenceError: the runtime failed.
        """
        self._check_inputs(inputs)
        start = time.perf_counter()
        ok = False
        try:
            with self._lock:
                for index, array in zip(self._input_index, inputs, strict=True):
                    self._interpreter.set_tensor(index, array)
                self._interpreter.invoke()
                outputs = [self._interpreter.get_tensor(i).copy() for i in self._output_index]
            ok = True
            return outputs
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"model {self.name} {self.version} failed: {exc}") from exc
        finally:
            if record:
                self.stats.record((time.perf_counter() - start) * 1000.0, ok=ok)

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        expected = self.info.inputs
        if len(inputs) != len(expected):
            raise InputError(f"model {self.name} takes {len(expected)} input(s), got {len(inputs)}")
        for array, tensor in zip(inputs, expected, strict=True):
            if array.dtype != np.dtype(tensor.dtype):
                raise InputError(
                    f"input {tensor.name!r} of {self.name} is {tensor.dtype}, got {array.dtype}"
                )
            if tuple(array.shape) != tensor.shape:
                raise InputError(
                    f"input {tensor.name!r} of {self.name} has shape {list(tensor.shape)}, "
                    f"got {list(array.shape)}"
                )


def load_model(path: Path, name: str, version: str, *, num_threads: int = 1) -> LoadedModel:
    """Inspect, load and allocate a model on the CPU.

    Raises:
        ModelFileError: not a loadable TFLite model.
        UnsupportedModelError: the model needs an Edge TPU (not supported by this build yet).
        RuntimeMissingError: no TFLite runtime is installed.
    """
    info = inspect_model_file(path)
    if info.edgetpu:
        raise UnsupportedModelError(
            f"{path.name} is compiled for the Edge TPU (contains edgetpu-custom-op) and cannot "
            "run on the CPU; deploy the CPU variant of this model instead"
        )
    runtime = find_runtime()
    try:
        interpreter = runtime.interpreter_cls(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path.name}: the runtime cannot load it: {first_line}") from exc
    return LoadedModel(name, version, path, info, interpreter)


class Engine:
    """The models this agent currently serves, by name. Thread-safe."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel | None:
        """The loaded model called ``name``, or None."""
        with self._lock:
            return self._models.get(name)

    def put(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` under its name from now on; return the model it replaced."""
        with self._lock:
            previous = self._models.get(model.name)
            self._models[model.name] = model
            return previous

    def models(self) -> list[LoadedModel]:
        """A snapshot of the loaded models, sorted by name."""
        with self._lock:
            return [self._models[k] for k in sorted(self._models)]
