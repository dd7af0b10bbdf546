"""Delivery of a 100 MB model: download + verify + activate, against copying and hashing it.

    python -m bench.bench_delivery

Baseline: `cp` of the same file plus `openssl dgst -sha256` of the copy (the fastest honest
"move and verify" on this machine). Measured: a real server and agent (processes on loopback):
from the agent's "updating" log line to its "activated" line, which covers the download through
gRPC, the streaming sha256, the move into the store, loading, warm-up and the smoke test. Also:
the p50 latency of another model served by the same agent while the download runs, against idle.
Uses the test harness (tests/harness.py) to start the processes.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from tests import oip
from tests.harness import REPO, make_agent, start_server, wait_for


def build_models(folder: Path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location(
        "make_test_models", REPO / "scripts" / "make_test_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    large = folder / "large.tflite"
    large.write_bytes(module.build_large())
    small = folder / "color_float.tflite"
    small.write_bytes(module.build("float32"))
    return large, small


def baseline(large: Path, folder: Path) -> float:
    target = folder / "copy.tflite"
    start = time.perf_counter()
    cp, openssl = shutil.which("cp") or "cp", shutil.which("openssl") or "openssl"
    subprocess.run([cp, str(large), str(target)], check=True)
    subprocess.run([openssl, "dgst", "-sha256", str(target)], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def log_time(log: str, pattern: str) -> float:
    for line in log.splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line matches {pattern!r}")


def main() -> int:
    if shutil.which("openssl") is None:
        print("openssl is needed for the baseline")
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        large, small = build_models(tmp)
        size_mb = large.stat().st_size / 1e6
        base = statistics.median(baseline(large, tmp) for _ in range(3))
        server = start_server(tmp, None)
        agent = None
        try:
            server.admin(
                "models", "push", str(small), "--name", "colors", "--version", "1.0.0", "--deploy"
            )
            agent = make_agent(tmp, "bench", server).start()
            wait_for(
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
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    start = time.perf_counter()
                    oip.infer(agent.socket, "colors", "image", data)
                    samples.append((time.time(), (time.perf_counter() - start) * 1000))
                    time.sleep(0.005)

            loader = threading.Thread(target=load)
            loader.start()
            time.sleep(3)
            server.admin(
                "models", "push", str(large), "--name", "large", "--version", "1.0.0", "--deploy"
            )
            wait_for("the large model", lambda: "activated large" in agent.output(), timeout=600)
            reports = [line for line in server.proc.output().splitlines() if "large 1.0.0" in line]
            time.sleep(1)
            stop.set()
            loader.join()
            log = agent.output()
            began = log_time(log, r"updating large")
            done = log_time(log, r"activated large")
        finally:
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
    print(
        f"| another model's p50 while idle ({len(idle)} requests) | "
        f"{statistics.median(idle):.3f} ms | 1.00x |"
    )
    busy_p50, idle_p50 = statistics.median(busy), statistics.median(idle)
    print(
        f"| the same during the update ({len(busy)} requests) | "
        f"{busy_p50:.3f} ms | {busy_p50 / idle_p50:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
