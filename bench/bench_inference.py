"""What the agent adds on top of the raw runtime and the transport, measured in one run.

    python -m bench.bench_inference [--quick]

Baselines and measurements (each ratio is taken within this one run, on this machine):
  A. per-request latency, MobileNet v1 0.25 uint8 (tests/data), 1 thread:
     raw LiteRT invoke; the agent's engine; a bare gRPC unary call over a unix socket carrying
     the same request bytes and answering with the same response bytes (no model); the agent's
     OIP v2 ModelInfer over its unix socket; the same over REST on its REST unix socket, with
     Triton's binary tensors and with JSON tensors. Agent overhead = ModelInfer - echo - raw invoke.
     A bare gRPC server that runs the same raw invoke is the baseline of the agent's own overhead.
  B. throughput of a ~10 ms float CNN (scripts/make_test_models.py heavy_float.tflite):
     raw single-interpreter loop vs the agent's OIP API with 2 workers, driven by a separate
     client process with 2 threads (bench/load_client.py), as a device's apps would.
  C. throughput of the small Coral model through the agent vs the bare gRPC echo's calls/s,
     same client process.
  D. a real `edgefleet-agent run` process serving two models from its store: time from start to
     the first served inference, and its RSS.
  E. a 1080p uint8 frame inline in the request vs through shared memory.
  F. the small model's p95 while a client process floods the heavy CNN with 64 threads (its
     excess refused at admission): the ratio to its p95 without the flood, same run.
Prints a Markdown table for docs/benchmarks.md, one row as soon as it is measured. --quick runs
every part with 100 iterations and 0.5 s windows (a check that the benchmark still works; its
figures mean little).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from agent.inference.engine import Engine, EngineOptions
from agent.inference.oip import create_server
from agent.inference.rest import create_rest_server
from agent.inference.runtime import find_runtime
from agent.inference.serving import Serving
from bench.agent_process import start_agent
from bench.processes import Children, run_folder
from bench.rest_client import rest_infer
from protos import inference_pb2, inference_pb2_grpc
from tests.harness import Proc, app_folder, app_user, give_to_app_user, start, wait_for

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SMALL = DATA / "mobilenet_v1_0.25_128_quant.tflite"
LSTM = DATA / "keras_lstm_mnist_ptq.tflite"
ECHO_METHOD = "/bench.Echo/Call"
OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"


def measure(fn: Callable[[], object], iterations: int, warmup: int = 50) -> list[float]:
    """Latencies of ``fn`` in milliseconds after a warm-up."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def throughput(fn: Callable[[], object], clients: int, seconds: float) -> float:
    """Calls per second of ``fn`` from ``clients`` threads for ``seconds``."""
    for _ in range(5):
        fn()
    deadline = time.perf_counter() + seconds
    counts = [0] * clients

    def loop(i: int) -> None:
        while time.perf_counter() < deadline:
            fn()
            counts[i] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def remote_throughput(
    children: Children, sock: Path, method: str, payload: bytes, *, clients: int, seconds: float
) -> float:
    """Calls per second from a separate client process (bench/load_client.py)."""
    payload_file = children.folder / "payload.bin"
    payload_file.write_bytes(payload)
    out = children.run(
        "load_client",
        [
            sys.executable,
            str(REPO / "bench" / "load_client.py"),
            str(sock),
            method,
            str(payload_file),
            str(clients),
            str(seconds),
        ],
        timeout=seconds + 120,
    )
    return float(out.strip())


def bare_invoke_server(sock: Path, interpreter: Any, shape: tuple[int, ...]) -> grpc.Server:
    """A bare gRPC server whose handler runs the raw interpreter on the request's tensor bytes:
    transport plus invoke, with none of the agent's code."""
    in_index = interpreter.get_input_details()[0]["index"]
    out_index = interpreter.get_output_details()[0]["index"]
    size = int(np.prod(shape))
    lock = threading.Lock()

    def handle(request: bytes, _context: Any) -> bytes:
        parsed = inference_pb2.ModelInferRequest.FromString(request)
        data = np.frombuffer(parsed.raw_input_contents[0][:size], dtype=np.uint8).reshape(shape)
        with lock:
            interpreter.set_tensor(in_index, data)
            interpreter.invoke()
            out = interpreter.get_tensor(out_index).tobytes()
        return inference_pb2.ModelInferResponse(raw_output_contents=[out]).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Call": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    return server


def echo_server(sock: Path, response: bytes) -> grpc.Server:
    """A gRPC server whose one method answers every request with fixed bytes."""

    def handle(_request: bytes, _context: Any) -> bytes:
        return response

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Call": grpc.unary_unary_rpc_method_handler(handle)},  # bytes in, bytes out
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    return server


def oip_request(name: str, tensor_name: str, data: np.ndarray) -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(
        name=tensor_name,
        datatype="UINT8" if data.dtype == np.uint8 else "FP32",
        shape=list(data.shape),
    )
    request.raw_input_contents.append(data.tobytes())
    return request


def shm_request(
    model: str, tensor_name: str, datatype: str, shape: list[int], *, region: str, size: int
) -> inference_pb2.ModelInferRequest:
    """A ModelInferRequest whose input lives in a registered shared-memory region."""
    request = inference_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=tensor_name, datatype=datatype, shape=shape)
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = size
    return request


def register(stub: Any, memory: SharedMemory, region: str) -> None:
    stub.SystemSharedMemoryRegister(
        inference_pb2.SystemSharedMemoryRegisterRequest(
            name=region, key=f"/{memory.name}", byte_size=memory.size
        )
    )


def shm_server(folder: Path, models: dict[str, Path], regions: dict[str, SharedMemory]) -> Proc:
    """The OIP API serving ``models`` (2 workers each) from a process of ``app_user()`` (the
    agent refuses shared memory as root), with ``regions`` registered."""
    specs = []
    for name, path in models.items():
        copy = folder / path.name
        copy.write_bytes(path.read_bytes())
        give_to_app_user(copy)
        specs.append(f"{name}={copy}")
    for memory in regions.values():
        if os.geteuid() == 0:
            os.chown(f"/dev/shm/{memory.name}", *app_user())  # noqa: S108 - where shm lives
    cmd = [sys.executable, "-m", "tests.tools.oip_serve", str(folder / "oip.sock"),
           "--workers", "2", *specs]  # fmt: skip
    proc = start(cmd, folder.parent / f"{folder.name}.log", cwd=REPO, user=app_user())
    wait_for("the shared-memory API", lambda: "ready" in proc.output() or proc.popen.poll(),
             timeout=60)  # fmt: skip
    with grpc.insecure_channel(f"unix:{folder / 'oip.sock'}") as channel:
        for region, memory in regions.items():
            register(inference_pb2_grpc.GRPCInferenceServiceStub(channel), memory, region)
    return proc


def stats(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), float(np.percentile(samples, 95))


def heavy_model(children: Children) -> Path:
    folder = children.folder / "models"
    children.run(
        "make_test_models",
        [sys.executable, str(REPO / "scripts" / "make_test_models.py"), str(folder)],
        timeout=300,
    )
    return folder / "heavy_float.tflite"


def agent_start(
    children: Children,
    *,
    python: Sequence[str] = (sys.executable,),
    name: str = "agent",
    requests: int = 200,
) -> tuple[float, float, int]:
    """Start a real agent serving two models from its store (run by ``python``: another
    environment's interpreter for bench_package); (s to first inference, RSS MB after
    ``requests`` more, threads).

    Raises:
        ChildExitedError: the agent exited before it served (its log is printed).
    """
    start = time.perf_counter()
    agent, sock = start_agent(
        children, [("mobilenet", SMALL), ("lstm", LSTM)], python=python, name=name
    )
    proc = agent.popen
    # Retry fast: by default a gRPC channel backs off a full second after a failed connect.
    channel = grpc.insecure_channel(
        f"unix:{sock}",
        options=[
            ("grpc.initial_reconnect_backoff_ms", 5),
            ("grpc.min_reconnect_backoff_ms", 5),
            ("grpc.max_reconnect_backoff_ms", 20),
        ],
    )
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = oip_request("mobilenet", "input", np.zeros((1, 128, 128, 3), dtype=np.uint8))
    try:
        while True:
            try:
                stub.ModelInfer(request, timeout=1)
                break
            except grpc.RpcError:
                agent.check_running()
                if time.perf_counter() - start > 30:
                    raise
                time.sleep(0.005)
        first = time.perf_counter() - start
        for _ in range(requests):
            stub.ModelInfer(request)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(
            next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]
        )
        threads = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
    finally:
        agent.stop()
    return first, rss_kb / 1024.0, threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    n = 100 if args.quick else 2000
    seconds = 0.5 if args.quick else 5.0
    runtime = find_runtime()
    rng = np.random.default_rng(0)
    small_input = rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    # Each row is printed as soon as it is measured: a failure late in the run keeps the rest.
    print(
        f"{time.strftime('%Y-%m-%d')} · {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()} · {runtime.name} {runtime.version} · {n} iterations, "
        f"{seconds:g} s throughput windows"
    )
    print()
    print("| measurement | p50 / rate | p95 | ratio |")
    print("|---|---|---|---|", flush=True)

    def emit(row: tuple[str, str, str, str]) -> None:
        print("| " + " | ".join(row) + " |", flush=True)

    with run_folder("bench_inference") as children:
        tmp = children.folder
        # A. latency -------------------------------------------------------------------------
        raw = runtime.interpreter_cls(model_path=str(SMALL), num_threads=1)
        raw.allocate_tensors()
        i_in, i_out = raw.get_input_details()[0]["index"], raw.get_output_details()[0]["index"]

        def raw_call() -> object:
            raw.set_tensor(i_in, small_input)
            raw.invoke()
            return raw.get_tensor(i_out)

        engine = Engine(EngineOptions(workers=2))
        engine.put(engine.load("mobilenet", "1.0.0", SMALL))
        model = engine.get("mobilenet")
        server, _ = create_server(engine, socket_path=tmp / "oip.sock")
        server.start()
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(
            grpc.insecure_channel(f"unix:{tmp / 'oip.sock'}")
        )
        request = oip_request("mobilenet", "input", small_input)
        response_bytes = stub.ModelInfer(request).SerializeToString()
        echo = echo_server(tmp / "echo.sock", response_bytes)
        echo_call = grpc.insecure_channel(f"unix:{tmp / 'echo.sock'}").unary_unary(ECHO_METHOD)
        request_bytes = request.SerializeToString()

        bare_interpreter = runtime.interpreter_cls(model_path=str(SMALL), num_threads=1)
        bare_interpreter.allocate_tensors()
        bare = bare_invoke_server(tmp / "bare.sock", bare_interpreter, (1, 128, 128, 3))
        bare_call = grpc.insecure_channel(f"unix:{tmp / 'bare.sock'}").unary_unary(
            "/bench.Bare/Call"
        )

        raw_s = measure(raw_call, n)
        engine_s = measure(lambda: model.infer([small_input], record=False), n)
        echo_s = measure(lambda: echo_call(request_bytes), n)
        bare_s = measure(lambda: bare_call(request_bytes), n)
        oip_s = measure(lambda: stub.ModelInfer(request), n)
        rest = create_rest_server(Serving(engine), socket_path=tmp / "rest.sock")
        rest.start()
        rest_where = f"unix:{tmp / 'rest.sock'}"
        rest_binary_s = measure(rest_infer(rest_where, "mobilenet", "input", small_input,
                                           binary=True), n)  # fmt: skip
        rest_json_s = measure(rest_infer(rest_where, "mobilenet", "input", small_input,
                                         binary=False), n)  # fmt: skip
        rest.stop(1)
        raw_p50, echo_p50, oip_p50 = stats(raw_s)[0], stats(echo_s)[0], stats(oip_s)[0]
        bare_p50 = stats(bare_s)[0]
        kib = len(request_bytes) // 1024
        for label, samples in (
            ("raw LiteRT invoke (1 thread)", raw_s),
            ("agent engine LoadedModel.infer", engine_s),
            (f"bare gRPC echo, same {kib} KiB request, unix socket", echo_s),
            ("bare gRPC server running the raw invoke, same request", bare_s),
            ("agent OIP v2 ModelInfer, unix socket", oip_s),
            ("agent REST infer, binary tensors, REST unix socket", rest_binary_s),
            ("agent REST infer, JSON tensors, REST unix socket", rest_json_s),
        ):
            p50, p95 = stats(samples)
            emit((label, f"{p50:.3f} ms", f"{p95:.3f} ms", f"{p50 / raw_p50:.2f}x raw"))
        additive = oip_p50 - echo_p50 - raw_p50
        emit(("ModelInfer - echo - raw invoke", f"{additive:.3f} ms", "", ""))
        own = oip_p50 - bare_p50
        emit(
            (
                "agent's own: ModelInfer - bare server with invoke",
                f"{own:.3f} ms",
                "",
                "target <= 0.150 ms",
            )
        )
        bare.stop(0)

        # C. small-model throughput vs bare gRPC calls/s, client in its own process ---------------
        echo_tp = remote_throughput(
            children, tmp / "echo.sock", ECHO_METHOD, request_bytes, clients=2, seconds=seconds
        )
        oip_tp = remote_throughput(
            children, tmp / "oip.sock", OIP_INFER, request_bytes, clients=2, seconds=seconds
        )
        emit(("bare gRPC echo, client process, 2 threads", f"{echo_tp:.0f}/s", "", "1.00x"))
        emit(
            (
                "agent ModelInfer (mobilenet), 2 workers, same client",
                f"{oip_tp:.0f}/s",
                "",
                f"{oip_tp / echo_tp:.2f}x echo",
            )
        )
        echo.stop(0)

        # B. heavy model: raw loop vs 2 workers ---------------------------------------------------
        heavy = heavy_model(children)
        heavy_raw = runtime.interpreter_cls(model_path=str(heavy), num_threads=1)
        heavy_raw.allocate_tensors()
        heavy_input = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
        h_in = heavy_raw.get_input_details()[0]["index"]

        def heavy_call() -> object:
            heavy_raw.set_tensor(h_in, heavy_input)
            heavy_raw.invoke()
            return None

        raw_tp = throughput(heavy_call, 1, seconds)
        engine.put(engine.load("heavy", "1.0.0", heavy))
        heavy_bytes = oip_request("heavy", "image", heavy_input).SerializeToString()
        oip_heavy_tp = remote_throughput(
            children, tmp / "oip.sock", OIP_INFER, heavy_bytes, clients=2, seconds=seconds
        )
        emit(
            (
                "heavy CNN raw single-interpreter loop",
                f"{raw_tp:.1f}/s",
                f"{1000 / raw_tp:.2f} ms each",
                "1.00x",
            )
        )
        memory = SharedMemory(create=True, size=heavy_input.nbytes)
        np.ndarray(heavy_input.shape, np.float32, buffer=memory.buf)[:] = heavy_input
        shm_heavy = shm_request(
            "heavy", "image", "FP32", [1, 224, 224, 3], region="heavy_in", size=heavy_input.nbytes
        ).SerializeToString()
        # The agent refuses shared memory as root (issue 20): the same engine serves it from a
        # process of an unprivileged user when the benchmark runs as root.
        with app_folder("edgefleet-bench-shm-") as shared:
            api = shm_server(shared, {"heavy": heavy}, {"heavy_in": memory})
            try:
                shm_heavy_tp = {
                    clients: remote_throughput(children, shared / "oip.sock", OIP_INFER,
                                               shm_heavy, clients=clients, seconds=seconds)
                    for clients in (2, 3)
                }  # fmt: skip
            finally:
                api.stop()
        emit(
            (
                "heavy CNN via agent ModelInfer, 2 workers, 2 clients",
                f"{oip_heavy_tp:.1f}/s",
                "",
                f"{oip_heavy_tp / raw_tp:.2f}x raw (target 1.6x)",
            )
        )
        for clients, rate in shm_heavy_tp.items():
            emit(
                (
                    f"heavy CNN, input in shared memory, 2 workers, {clients} clients",
                    f"{rate:.1f}/s",
                    "",
                    f"{rate / raw_tp:.2f}x raw (target 1.6x)",
                )
            )

        # E. a 1920x1080 uint8 frame: inline vs shared memory -----------------------------------
        engine.put(engine.load("frames", "1.0.0", heavy.parent / "color_uint8_1080p.tflite"))
        frame = rng.integers(0, 256, (1, 1080, 1920, 3), dtype=np.uint8)
        inline_frame = oip_request("frames", "image", frame)
        frame_memory = SharedMemory(create=True, size=frame.nbytes)
        np.ndarray(frame.shape, np.uint8, buffer=frame_memory.buf)[:] = frame
        shm_frame = shm_request(
            "frames", "image", "UINT8", [1, 1080, 1920, 3], region="frame_in", size=frame.nbytes
        )
        frames_n = 10 if args.quick else 200
        # Both ways against the same API process (an unprivileged user's, see shm_server).
        frames_model = {"frames": heavy.parent / "color_uint8_1080p.tflite"}
        with app_folder("edgefleet-bench-frames-") as shared:
            api = shm_server(shared, frames_model, {"frame_in": frame_memory})
            try:
                with grpc.insecure_channel(f"unix:{shared / 'oip.sock'}") as channel:
                    frames = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
                    inline_frame_s = measure(lambda: frames.ModelInfer(inline_frame), frames_n,
                                             warmup=5)  # fmt: skip
                    shm_frame_s = measure(lambda: frames.ModelInfer(shm_frame), frames_n,
                                          warmup=5)  # fmt: skip
            finally:
                api.stop()
        inline_p50 = stats(inline_frame_s)[0]
        for label, samples in (
            ("1080p uint8 frame (6 MB) inline in the request", inline_frame_s),
            ("1080p uint8 frame through shared memory", shm_frame_s),
        ):
            p50, p95 = stats(samples)
            emit((label, f"{p50:.3f} ms", f"{p95:.3f} ms", f"{p50 / inline_p50:.2f}x inline"))
        # F. a flood on one model: another model's latency, and how much of the flood is served
        flood_threads = 64  # far more calls than the heavy model's 2 + 32 places
        flood_s = 3.0 + n * 0.01  # the flood client's start, then the whole measurement
        calm_s = measure(lambda: stub.ModelInfer(request), n)
        heavy_stats = engine.get("heavy").stats
        refused_before = heavy_stats.snapshot().rejected
        with futures.ThreadPoolExecutor(1) as pool:
            flood = pool.submit(remote_throughput, children, tmp / "oip.sock", OIP_INFER,
                                heavy_bytes, clients=flood_threads, seconds=flood_s)  # fmt: skip
            wait_for("the flood", lambda: heavy_stats.snapshot().rejected > refused_before,
                     timeout=60, interval=0.05)  # fmt: skip
            flooded_s = measure(lambda: stub.ModelInfer(request), n, warmup=5)
            flood_rate = flood.result()
        refused = heavy_stats.snapshot().rejected - refused_before
        calm_p50, calm_p95 = stats(calm_s)
        flooded_p50, flooded_p95 = stats(flooded_s)
        emit(("mobilenet ModelInfer, no other load", f"{calm_p50:.3f} ms", f"{calm_p95:.3f} ms",
              "1.00x p95"))  # fmt: skip
        emit(
            (
                f"mobilenet ModelInfer while {flood_threads} threads flood the heavy CNN "
                f"({flood_rate:.1f}/s served, {refused} refused and counted)",
                f"{flooded_p50:.3f} ms",
                f"{flooded_p95:.3f} ms",
                f"{flooded_p95 / calm_p95:.2f}x p95",
            )
        )
        server.stop(0)
        for each in (memory, frame_memory):
            each.close()
            each.unlink()

        # D. a real agent process -----------------------------------------------------------------
        first_s, rss_mb, threads = agent_start(children)
        emit(
            (
                "agent process: start to first served inference",
                f"{first_s:.2f} s",
                "",
                "target <= 1 s",
            )
        )
        emit(
            (
                f"agent process RSS, 2 models x 2 workers ({threads} threads)",
                f"{rss_mb:.1f} MB",
                "",
                "target <= 90 MB",
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
