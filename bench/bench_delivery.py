"""Delivery of a 100 MB model: download + verify + activate, against copying and hashing it.

    python -m bench.bench_delivery [--quick]

Baseline: `cp` of the same file plus `openssl dgst -sha256` of the copy (the fastest honest
"move and verify" on this machine). Measured: a real server and agent (processes on loopback):
from the agent's "updating" log line to its "activated" line, which covers the download through
gRPC, the streaming sha256, the move into the store, loading, warm-up and the smoke test. Also:
the p50 latency of another model served by the same agent while the download runs, against idle.
Uses the test harness (tests/harness.py) to start the processes. --quick delivers a 4 MB model
after a 0.5 s idle window (a check that the benchmark still works; its figures mean little).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from bench.processes import Children, ensure_running, run_folder
from tests import oip
from tests.harness import REPO, Agent, make_agent, start_server, wait_for

LARGE_WIDTH = 5120  # one 5120x5120 float layer: ~105 MB
QUICK_WIDTH = 1024  # ~4 MB


def build_models(folder: Path, width: int) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location(
        "make_test_models", REPO / "scripts" / "make_test_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    large = folder / "large.tflite"
    large.write_bytes(module.build_large(width))
    small = folder / "color_float.tflite"
    small.write_bytes(module.build("float32"))
    return large, small


def baseline(children: Children, large: Path) -> float:
    target = children.folder / "copy.tflite"
    start = time.perf_counter()
    cp, openssl = shutil.which("cp") or "cp", shutil.which("openssl") or "openssl"
    children.run("cp", [cp, str(large), str(target)], timeout=120)
    children.run("openssl", [openssl, "dgst", "-sha256", str(target)], timeout=120)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def wait_agent(agent: Agent, what: str, probe: Callable[[], object], timeout: float) -> None:
    """Wait until ``probe`` is true, or stop at once when the agent has exited.

    Raises:
        ChildExitedError: the agent exited (its log is printed).
        AssertionError: ``timeout`` seconds passed.
    """
    assert agent.proc is not None
    popen = agent.proc.popen
    wait_for(what, lambda: popen.poll() is not None or probe(), timeout=timeout)
    ensure_running("the agent", popen, agent.proc.log)


def log_time(log: str, pattern: str) -> float:
    for line in log.splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line matches {pattern!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4 MB model (a smoke run)")
    args = parser.parse_args()
    idle_s = 0.5 if args.quick else 3.0
    if shutil.which("openssl") is None:
        print("openssl is needed for the baseline")
        return 2
    with run_folder("bench_delivery") as children:
        tmp = children.folder
        large, small = build_models(tmp, QUICK_WIDTH if args.quick else LARGE_WIDTH)
        size_mb = large.stat().st_size / 1e6
        base = statistics.median(baseline(children, large) for _ in range(3))
        server = start_server(tmp, None)
        agent = None
        stop = threading.Event()  # the request loop's
        try:
            server.admin(
                "models", "push", str(small), "--name", "colors", "--version", "1.0.0", "--deploy"
            )
            agent = make_agent(tmp, "bench", server).start()
            wait_agent(
                agent,
                "colors",
                lambda: (
                    oip.stub(agent.socket)
                    .ModelReady(oip.pb.ModelReadyRequest(name="colors"), timeout=1)
                    .ready
                ),
                timeout=60,
            )
            data = np.zeros((1, 32, 32, 3), dtype=np.float32)
            samples: list[tuple[float, float]] = []

            def load() -> None:
                while not stop.is_set():
                    start = time.perf_counter()
                    oip.infer(agent.socket, "colors", "image", data)
                    samples.append((time.time(), (time.perf_counter() - start) * 1000))
                    time.sleep(0.005)

            loader = threading.Thread(target=load)
            loader.start()
            time.sleep(idle_s)
            server.admin(
                "models", "push", str(large), "--name", "large", "--version", "1.0.0", "--deploy"
            )
            wait_agent(
                agent, "the large model", lambda: "activated large" in agent.output(), timeout=600
            )
            reports = [line for line in server.proc.output().splitlines() if "large 1.0.0" in line]
            time.sleep(1)
            stop.set()
            loader.join()
            log = agent.output()
            began = log_time(log, r"updating large")
            done = log_time(log, r"activated large")
        finally:
            stop.set()
            if agent is not None:
                agent.stop()
            server.proc.stop()
    delivery = done - began
    for line in reports:
        print(line[11:23], line.split("device bench: ")[-1][:60])
    idle = [ms for t, ms in samples if t < began]
    busy = [ms for t, ms in samples if began <= t <= done]
    print(f"{time.strftime('%Y-%m-%d')} · {size_mb:.0f} MB model over loopback gRPC")
    print()
    print("| measurement | value | ratio |")
    print("|---|---|---|")
    print(f"| cp + openssl dgst -sha256 (baseline, median of 3) | {base:.2f} s | 1.00x |")
    print(
        f"| agent: download + verify + load + smoke + activate | {delivery:.2f} s | "
        f"{delivery / base:.2f}x (target <= 3x) |"
    )
    idle_p50 = statistics.median(idle)
    print(f"| another model's p50 while idle ({len(idle)} requests) | {idle_p50:.3f} ms | 1.00x |")
    if busy:  # a small model (--quick) can be delivered between two requests
        busy_p50 = statistics.median(busy)
        print(
            f"| the same during the update ({len(busy)} requests) | "
            f"{busy_p50:.3f} ms | {busy_p50 / idle_p50:.2f}x |"
        )
    else:
        print("| the same during the update (no request fell in it) | - | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
