"""Per-device download progress on the server (issue 22 item 8), and what makes a delivery: a
download the device resumed counts as the whole file once the server has sent every byte from
0 without a gap (fleet_server/catalog/downloads.py). A real server, simulated devices on the
real device API, the real admin CLI."""

from __future__ import annotations

import json
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos import manifest_pb2
from tests.harness import REPO, Server

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def _manifest(response: pb.CheckInResponse) -> manifest_pb2.Manifest:
    (envelope,) = response.desired
    return manifest_pb2.Manifest.FromString(envelope.payload)


def _downloads(server: Server, device: str) -> list[dict[str, Any]]:
    shown = json.loads(server.admin("devices", "show", device, "--json").stdout)
    return list(shown.get("downloads", []))


def _report(manifest: manifest_pb2.Manifest) -> pb.BenchmarkReport:
    return pb.BenchmarkReport(
        model_name=manifest.model_name, version=manifest.version, sha256=manifest.sha256,
        backend="cpu", threads=1, requests=100, seconds=1.0, p50_ms=5.0, p95_ms=6.0,
        throughput_per_s=100.0, runtime="sim",
    )  # fmt: skip


def test_a_resumed_download_is_delivered_and_a_gap_is_not(
    server_factory: Callable[..., Server], broker_url: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.tflite"  # four of the server's 1 MiB chunks
    big.write_bytes(
        runpy.run_path(str(REPO / "scripts" / "make_test_models.py"))["build_large"](1024)
    )
    server = server_factory(broker_url)
    server.admin("models", "push", str(big), "--name", "big", "--version", "1.0.0", "--deploy")
    fleet, token = server.sim_fleet(), server.enrollment_token()
    resumer = SimDevice.enroll(fleet, token, "resumer")
    skipper = SimDevice.enroll(fleet, token, "skipper")
    manifest = _manifest(resumer.check_in())
    skipper.check_in()
    total = manifest.size
    assert total > 3 * MIB

    # The first stream is cut after one chunk (the link dropped); the device resumes from what
    # it holds. Before, only a single stream from byte 0 to the end counted.
    first = resumer.stub.DownloadArtifact(
        pb.DownloadRequest(artifact_id=manifest.sha256, offset=0), timeout=60
    )
    next(first)
    first.cancel()
    rest = resumer.stub.DownloadArtifact(
        pb.DownloadRequest(artifact_id=manifest.sha256, offset=MIB), timeout=60
    )
    assert sum(1 for _ in rest) >= 1
    (shown,) = _downloads(server, "resumer")
    assert (shown["model_name"], int(shown["reached"]), int(shown["total"])) == (
        "big",
        total,
        total,
    ), shown
    resumer.stub.ReportBenchmark(_report(manifest), timeout=30)  # accepted
    assert "big 1.0.0" in server.admin("devices", "show", "resumer").stdout

    # A device that asks only for the second half was never sent the first: not a delivery.
    half = skipper.stub.DownloadArtifact(
        pb.DownloadRequest(artifact_id=manifest.sha256, offset=2 * MIB), timeout=60
    )
    assert sum(1 for _ in half) >= 1
    (shown,) = _downloads(server, "skipper")
    assert int(shown["reached"]) == 0, shown
    with pytest.raises(grpc.RpcError) as refused:
        skipper.stub.ReportBenchmark(_report(manifest), timeout=30)
    assert "was never sent to this device" in (refused.value.details() or "")
    assert "download  big 1.0.0" in server.admin("devices", "show", "skipper").stdout
    resumer.close()
    skipper.close()
