"""Issue 25's measure: 50 devices downloading a 20 MB model at once, through the server's gRPC
stream against from S3-compatible object storage with presigned URLs, in one run.

    python -m bench.bench_objstore [--quick]

The store is Ceph's radosgw on a single-node test cluster (tests/objstore.py; Debian's radosgw,
ceph-mon and ceph-osd must be installed). One server process serves each mode (the first with
its data dir's folder, the second with --artifact-store s3://...); the devices are simulated
(fleet_server/simulator.py) in a client process of their own (bench/objstore_client.py), each
hashing what it receives. Per mode, from the moment every device is enrolled: wall time of all
downloads, the server process's CPU seconds (utime + stime from /proc), and the bytes the
devices received from the server (gRPC messages: the chunks, or the URL answers) and from the
store. Everything runs on this machine's cores, the store included.
--quick: 4 devices and a 4 MB model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_delivery import build_models
from tests import objstore
from tests.harness import REPO, Server, start_server

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def measure(server: Server, mode: str, model: Path, devices: int) -> dict[str, float]:
    server.admin("models", "push", str(model), "--name", "big", "--version", "1.0.0",
                 "--no-compress")  # fmt: skip
    listed = json.loads(server.admin("models", "list", "--json").stdout)
    sha = listed[0]["sha256"]
    pid = server.proc.popen.pid
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.objstore_client", "--mode", mode, "--address",
         server.address, "--ca", str(server.ca_file), "--token", server.enrollment_token(),
         "--devices", str(devices), "--artifact", sha, "--size", str(model.stat().st_size)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    if client.stdout.readline().strip() != "enrolled":
        client.kill()
        raise RuntimeError(f"{mode} client failed to enroll:\n{client.communicate()[1][-3000:]}")
    cpu0 = process_cpu(pid)
    out, err = client.communicate("go\n", timeout=1800)
    cpu1 = process_cpu(pid)
    if client.returncode != 0:
        raise RuntimeError(f"{mode} client failed:\n{err[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    return {
        "seconds": float(report["seconds"]),
        "from_server": float(report["from_server"]),
        "from_store": float(report["from_store"]),
        "cpu": cpu1 - cpu0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 devices, a 4 MB model")
    args = parser.parse_args()
    if not objstore.available():
        print("needs Debian's radosgw, ceph-mon and ceph-osd (.ci/run installs them)")
        return 1
    devices, width = (4, 1024) if args.quick else (50, 2236)
    with tempfile.TemporaryDirectory(prefix="bench-objstore-") as scratch:
        folder = Path(scratch)
        model, _ = build_models(folder, width)  # bench_delivery's: one float layer
        results: dict[str, dict[str, float]] = {}
        with objstore.gateway_in(folder / "ceph") as gateway:
            creds = gateway.credentials_file(folder / "s3.credentials")
            for mode, extra in (
                ("grpc", []),
                ("url", ["--artifact-store", "s3://bench", "--s3-endpoint", gateway.endpoint,
                         "--s3-credentials", str(creds), "--s3-create-bucket"]),
            ):  # fmt: skip
                server = start_server(folder / mode, None, extra=extra)
                try:
                    results[mode] = measure(server, mode, model, devices)
                finally:
                    server.proc.stop()
        size = model.stat().st_size
    print(
        f"{devices} simulated devices downloading a {size / 1e6:.1f} MB model at once "
        f"({os.cpu_count()} cores, store and server on this machine, {time.strftime('%Y-%m-%d')})"
    )
    print("| mode | total time | server CPU | bytes from the server | bytes from the store |")
    print("|---|---|---|---|---|")
    for mode, label in (("grpc", "server's gRPC stream"), ("url", "object store, presigned")):
        r = results[mode]
        print(
            f"| {label} | {r['seconds']:.2f} s | {r['cpu']:.2f} s | "
            f"{r['from_server'] / 1e6:.3f} MB | {r['from_store'] / 1e6:.1f} MB |"
        )
    g, u = results["grpc"], results["url"]
    print(
        f"object store / gRPC: total time {u['seconds'] / g['seconds']:.2f}, server CPU "
        f"{u['cpu'] / max(g['cpu'], 1e-9):.3f}, bytes through the server "
        f"{u['from_server'] / g['from_server']:.5f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
