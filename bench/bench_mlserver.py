"""EdgeFleet's agent against MLServer 1.7 with a LiteRT runtime, side by side.

    make bench-mlserver      (creates .venv-mlserver, then runs this)

Same model (MobileNet v1 0.25 uint8) and same client: this process sends the same serialized
ModelInferRequest bytes over gRPC on 127.0.0.1 TCP (MLServer has no unix socket). Each server
runs in its own process (a real `edgefleet-agent run`, `mlserver start`), in one run. A
server's added latency is its ModelInfer p50 minus the raw LiteRT invoke p50 of the same run.
Targets (issue 20): over gRPC the agent adds at most 0.4x what MLServer adds; over REST with
JSON tensors at most 0.5x; the agent's REST with Triton's binary tensors is reported beside
them (MLServer has no binary REST). --quick makes 100 calls per
server (a check that the comparison still runs; its figures mean little).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from agent.inference.runtime import find_runtime
from bench.agent_process import start_agent
from bench.processes import Child, Children, run_folder
from bench.rest_client import rest_infer
from protos import inference_pb2

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p50(call: object, payload: bytes, n: int) -> float:
    assert callable(call)
    for _ in range(min(n, 100)):
        call(payload)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call(payload)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def start_mlserver(mlserver: Path, children: Children) -> tuple[Child, int, int]:
    """Start ``mlserver start`` on free ports (logging to mlserver.log); return it, its gRPC
    port and its HTTP (REST) port."""
    port, http_port = free_port(), free_port()
    folder = children.folder / "mlserver"
    model_dir = folder / "mobilenet"
    model_dir.mkdir(parents=True)
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "grpc_port": port,
                "http_port": http_port,
                "metrics_port": free_port(),
                "parallel_workers": 0,
                "debug": False,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "mobilenet",
                "implementation": "litert_runtime.LiteRTModel",
                "parameters": {"uri": str(MODEL)},
            }
        )
    )
    env = {"PYTHONPATH": str(REPO / "bench" / "mlserver")}
    child = children.start("mlserver", [str(mlserver), "start", str(folder)], env=env)
    return child, port, http_port


def wait_ready(server: Child, call: object, payload: bytes, timeout: float = 120.0) -> None:
    """Wait until ``call`` answers.

    Raises:
        ChildExitedError: the server exited first (its log is printed).
        grpc.RpcError: it did not answer within ``timeout`` seconds.
    """
    assert callable(call)
    deadline = time.monotonic() + timeout
    while True:
        try:
            call(payload, timeout=5)
            return
        except grpc.RpcError:
            server.check_running()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlserver", type=Path, default=REPO / ".venv-mlserver/bin/mlserver")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="100 calls each (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.iterations = 100
    if not args.mlserver.exists():
        print(f"{args.mlserver} missing: run `make bench-mlserver`", file=sys.stderr)
        return 2
    data = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    request = inference_pb2.ModelInferRequest(model_name="mobilenet")
    request.inputs.add(name="input", datatype="UINT8", shape=[1, 128, 128, 3])
    request.raw_input_contents.append(data.tobytes())
    payload = request.SerializeToString()

    runtime = find_runtime()
    raw = runtime.interpreter_cls(model_path=str(MODEL), num_threads=1)
    raw.allocate_tensors()
    i_in, i_out = raw.get_input_details()[0]["index"], raw.get_output_details()[0]["index"]

    def invoke(_payload: bytes) -> object:
        raw.set_tensor(i_in, data)
        raw.invoke()
        return raw.get_tensor(i_out)

    with run_folder("bench_mlserver") as children:
        mlserver, ml_port, ml_http = start_mlserver(args.mlserver, children)
        agent_port, agent_http = free_port(), free_port()
        agent, _sock = start_agent(
            children, [("mobilenet", MODEL)], tcp_port=agent_port, rest_port=agent_http
        )
        agent_call = grpc.insecure_channel(f"127.0.0.1:{agent_port}").unary_unary(INFER)
        ml_call = grpc.insecure_channel(f"127.0.0.1:{ml_port}").unary_unary(INFER)
        wait_ready(mlserver, ml_call, payload)
        wait_ready(agent, agent_call, payload)
        raw_p50 = p50(invoke, payload, args.iterations)
        agent_p50 = p50(agent_call, payload, args.iterations)
        ml_p50 = p50(ml_call, payload, args.iterations)
        # REST with JSON tensors, the form every OIP v2 HTTP server takes.
        agent_rest = rest_infer(f"127.0.0.1:{agent_http}", "mobilenet", "input", data, binary=False)
        ml_rest = rest_infer(f"127.0.0.1:{ml_http}", "mobilenet", "input", data, binary=False)
        agent_rest_p50 = p50(lambda _payload: agent_rest(), payload, args.iterations)
        ml_rest_p50 = p50(lambda _payload: ml_rest(), payload, args.iterations)
        # Triton's binary-data extension (MLServer has none): the agent's fast REST form.
        agent_binary = rest_infer(f"127.0.0.1:{agent_http}", "mobilenet", "input", data,
                                  binary=True)  # fmt: skip
        agent_binary_p50 = p50(lambda _payload: agent_binary(), payload, args.iterations)
    agent_added, ml_added = agent_p50 - raw_p50, ml_p50 - raw_p50
    print(f"{time.strftime('%Y-%m-%d')} · same client, 127.0.0.1 TCP, {args.iterations} calls")
    print()
    print("| server | ModelInfer p50 | added over raw invoke | ratio |")
    print("|---|---|---|---|")
    print(f"| raw LiteRT invoke | {raw_p50:.3f} ms | - | - |")
    print(f"| MLServer 1.7 + LiteRT runtime | {ml_p50:.3f} ms | {ml_added:.3f} ms | 1.00x |")
    print(
        f"| EdgeFleet agent | {agent_p50:.3f} ms | {agent_added:.3f} ms | "
        f"{agent_added / ml_added:.2f}x (target <= 0.4x) |"
    )
    print()
    print("| server | REST JSON infer p50 | added over raw invoke | ratio |")
    print("|---|---|---|---|")
    ml_rest_added, agent_rest_added = ml_rest_p50 - raw_p50, agent_rest_p50 - raw_p50
    print(f"| MLServer 1.7 + LiteRT runtime | {ml_rest_p50:.3f} ms | {ml_rest_added:.3f} ms | "
          "1.00x |")  # fmt: skip
    print(f"| EdgeFleet agent | {agent_rest_p50:.3f} ms | {agent_rest_added:.3f} ms | "
          f"{agent_rest_added / ml_rest_added:.2f}x (target <= 0.5x) |")  # fmt: skip
    binary_added = agent_binary_p50 - raw_p50
    print(f"| EdgeFleet agent, binary tensors (no MLServer equivalent) | {agent_binary_p50:.3f} ms "
          f"| {binary_added:.3f} ms | {binary_added / ml_rest_added:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
