"""How much the agent adds on top of the raw runtime, on a real model.

    python bench/bench_inference.py [--iterations N]

Measures, in one run on this machine, the per-request latency of MobileNet v1 0.25 (uint8, CPU):
  1. raw LiteRT: Interpreter.set_tensor + invoke + get_tensor
  2. the agent's engine: LoadedModel.infer (input checks, lock, statistics)
  3. the agent's OIP v2 API over its unix socket (gRPC, protobuf, raw tensor bytes)
and prints medians, p95 and the ratio of each to the raw runtime. Results go to
docs/benchmarks.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from agent.inference.engine import Engine, load_model
from agent.inference.oip import create_server
from agent.inference.runtime import find_runtime
from protos import inference_pb2, inference_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"


def measure(fn: Callable[[], object], iterations: int, warmup: int = 20) -> list[float]:
    """Latencies of ``fn`` in milliseconds after a warm-up."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def summary(name: str, samples: list[float], baseline: float | None) -> str:
    median = statistics.median(samples)
    p95 = float(np.percentile(samples, 95))
    ratio = f"{median / baseline:6.2f}x" if baseline else "  1.00x"
    return f"{name:34s} median {median:7.3f} ms   p95 {p95:7.3f} ms   {ratio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    runtime = find_runtime()
    data = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)

    raw = runtime.interpreter_cls(model_path=str(MODEL), num_threads=1)
    raw.allocate_tensors()
    in_index = raw.get_input_details()[0]["index"]
    out_index = raw.get_output_details()[0]["index"]

    def raw_call() -> object:
        raw.set_tensor(in_index, data)
        raw.invoke()
        return raw.get_tensor(out_index)

    model = load_model(MODEL, "mobilenet", "1.0.0", num_threads=1)
    engine = Engine()
    engine.put(model)

    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "oip.sock"
        server, _ = create_server(engine, socket_path=sock)
        server.start()
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"unix:{sock}"))
        request = inference_pb2.ModelInferRequest(model_name="mobilenet")
        request.inputs.add(name="input", datatype="UINT8", shape=[1, 128, 128, 3])
        request.raw_input_contents.append(data.tobytes())

        raw_samples = measure(raw_call, args.iterations)
        engine_samples = measure(lambda: model.infer([data]), args.iterations)
        oip_samples = measure(lambda: stub.ModelInfer(request), args.iterations)
        server.stop(0)

    base = statistics.median(raw_samples)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(
        f"runtime: {runtime.name} {runtime.version}; model {MODEL.name}; 1 thread; "
        f"{args.iterations} iterations; {time.strftime('%Y-%m-%d')}"
    )
    print(summary("raw LiteRT invoke", raw_samples, None))
    print(summary("agent engine (LoadedModel.infer)", engine_samples, base))
    print(summary("agent OIP v2 over unix socket", oip_samples, base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
