"""``edgefleet-agent bench``: latency and throughput of one model on this device."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import AgentError
from agent.inference.engine import LoadedModel, load_model
from agent.inference.runtime import find_runtime

__all__ = ["BenchResult", "random_inputs", "run_benchmark"]


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run, with what is needed to compare it across hardware."""

    model: str
    backend: str
    device: str
    threads: int
    concurrency: int
    seconds: float
    requests: int
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    arch: str
    cpu_cores: int
    runtime: str


def random_inputs(model: LoadedModel, seed: int = 0) -> list[np.ndarray]:
    """Deterministic random inputs of the right dtype and shape for every model input."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.info.inputs:
        dtype = np.dtype(tensor.dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            arrays.append(
                rng.integers(info.min, info.max, tensor.shape, dtype=dtype, endpoint=True)
            )
        elif dtype.kind == "f":
            arrays.append(rng.standard_normal(tensor.shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.integers(0, 2, tensor.shape).astype(bool))
        else:
            raise AgentError(f"input {tensor.name!r} has dtype {tensor.dtype}; cannot benchmark it")
    return arrays


def run_benchmark(
    path: Path,
    *,
    threads: int = 1,
    concurrency: int = 1,
    seconds: float = 5.0,
    edgetpus: Sequence[str] = (),
    edgetpu_library: str = "libedgetpu.so.1",
    prefer: str = "auto",
) -> BenchResult:
    """Warm up, then run ``concurrency`` request loops for ``seconds``.

    Raises:
        AgentError: the model cannot be loaded or run.
    """
    model = load_model(
        path,
        path.stem,
        "bench",
        num_threads=threads,
        workers=concurrency,
        queue_depth=0,
        edgetpus=edgetpus,
        edgetpu_library=edgetpu_library,
        prefer=prefer,
    )
    model.warm_up()
    inputs = random_inputs(model)
    deadline = time.perf_counter() + seconds
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []

    def loop(bucket: list[float]) -> None:
        try:
            while True:
                start = time.perf_counter()
                if start >= deadline:
                    return
                model.infer(inputs, record=False)
                bucket.append((time.perf_counter() - start) * 1000.0)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the model named
            errors.append(exc)

    began = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(b,)) for b in samples]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise AgentError(f"benchmark of {path.name} failed: {errors[0]}")
    latencies = np.fromiter((v for b in samples for v in b), dtype=np.float64)
    if latencies.size == 0:
        raise AgentError(f"{path.name}: no request finished within {seconds} s")
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
    runtime = find_runtime()
    return BenchResult(
        model=path.name,
        backend=model.backend,
        device=model.device,
        threads=threads,
        concurrency=concurrency,
        seconds=elapsed,
        requests=int(latencies.size),
        throughput_per_s=latencies.size / elapsed,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(latencies.mean()),
        arch=platform.machine(),
        cpu_cores=os.cpu_count() or 1,
        runtime=f"{runtime.name} {runtime.version}",
    )
