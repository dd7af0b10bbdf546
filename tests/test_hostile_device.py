"""What one enrolled device that lies about itself can do to the fleet's admin (a real server,
simulated devices on the real device API, the real admin CLI)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos import manifest_pb2
from tests.harness import Server

pytestmark = pytest.mark.slow


def _bloated(count: int) -> pb.Capabilities:
    """Capabilities within the device API's 8 MB message limit, but far beyond any device:
    tens of thousands of Edge TPUs, uint64 and uint32 extremes."""
    caps = pb.Capabilities(
        arch="x86_64",
        memory_bytes=2**64 - 1,
        disk_free_bytes=2**64 - 1,
        edgetpu_count=2**32 - 1,
        libedgetpu=True,
        max_builtin_op=2**32 - 1,
    )
    for i in range(count):
        caps.edgetpus.add(device=f"usb:{i}", kind="usb", path="/dev/bus/usb/" * 6, state="ready")
    return caps


def test_a_device_cannot_benchmark_a_variant_it_does_not_run(
    server_factory: Callable[..., Server], broker_url: str, color_models: Path
) -> None:
    # A benchmark moves the fleet's measured latency of a variant for the device's hardware
    # class (the median of that class's devices: one device is the whole class), and
    # selection prefers the fastest measured variant. The server checked that the device runs
    # the model version, not the variant file: a device running int8 could report the float
    # variant at 0.001 ms and move every device of its class to float.
    server = server_factory(broker_url)
    server.admin(
        "models", "push", str(color_models / "color_int8.tflite"),
        str(color_models / "color_float.tflite"), "--name", "color", "--version", "1.0.0",
        "--variant", "small", "--variant", "big", "--deploy",
    )  # fmt: skip
    fleet, token = server.sim_fleet(), server.enrollment_token()
    liar = SimDevice.enroll(fleet, token, "liar")
    honest = SimDevice.enroll(fleet, token, "honest")
    chosen = _variant_of(liar.check_in())  # it "installs" it and reports INSTALLED
    variants = {m["variant"]: m["sha256"] for m in _models(server)}
    other = next(v for v in variants if v != chosen)
    report = pb.BenchmarkReport(
        model_name="color", version="1.0.0", sha256=variants[other], backend="cpu",
        threads=1, requests=1000, seconds=1.0, p50_ms=0.001, p95_ms=0.001,
        throughput_per_s=1e6, runtime="lie",
    )  # fmt: skip
    try:
        liar.stub.ReportBenchmark(report, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    assert _variant_of(honest.check_in()) == chosen, "one device's benchmark moved its class"
    # Its own variant, which it says it installed but never downloaded (only its last byte):
    # refused too.
    report.sha256 = variants[chosen]
    size = next(int(m["size"]) for m in _models(server) if m["variant"] == chosen)
    tail = liar.stub.DownloadArtifact(
        pb.DownloadRequest(artifact_id=variants[chosen], offset=size - 1), timeout=30
    )
    assert sum(1 for _ in tail) == 1
    with pytest.raises(grpc.RpcError) as refused:
        liar.stub.ReportBenchmark(report, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "was never sent to this device" in (refused.value.details() or "")
    liar.close()
    honest.close()


def test_a_device_cannot_grow_the_registry_without_bound(
    server_factory: Callable[..., Server], broker_url: str
) -> None:
    # A check-in records every model the device says it runs (64 a call), whether or not the
    # catalog has such a model, and never forgets one: new names on every check-in grow the
    # device's rows (and 'devices show', 'devices list', the dashboard) without end.
    server = server_factory(broker_url)
    liar = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "liar")
    for call in range(10):
        liar.running = {f"m{call}-{i}": "1.0.0" for i in range(64)}
        liar.check_in(act=False)
    shown = json.loads(server.admin("devices", "show", "liar", "--json").stdout)
    models = shown[0]["models"] if isinstance(shown, list) else shown["models"]
    assert len(models) <= 64, f"{len(models)} model rows for one device"
    liar.close()


def test_a_status_report_with_a_nul_in_its_detail_is_stored(
    server_factory: Callable[..., Server], broker_url: str, db_url: str, color_models: Path
) -> None:
    # An agent's failure detail can carry anything its runtime printed. PostgreSQL refuses a
    # NUL in text: the report failed INTERNAL (the agent does not resend it), so neither the
    # device's state nor its rollout learned of the failure. The MQTT ingest strips NULs; the
    # device API did not.
    server = server_factory(broker_url, db_url=db_url)
    # (A model the server has: reports of names it never had make no row.)
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "color",
                 "--version", "1.0.0")  # fmt: skip
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "d0")
    device.report("color", "1.0.0", pb.FAILED, "interpreter said: \x00\x01 bad op")
    shown = json.loads(server.admin("devices", "show", "d0", "--json").stdout)
    models = shown[0]["models"] if isinstance(shown, list) else shown["models"]
    assert [m["state"] for m in models] == ["FAILED"]
    device.close()


def _models(server: Server) -> list[dict[str, str]]:
    return list(json.loads(server.admin("models", "list", "--json").stdout))


def _variant_of(response: pb.CheckInResponse) -> str:
    (envelope,) = response.desired
    return str(manifest_pb2.Manifest.FromString(envelope.payload).variant)


def test_one_device_with_bloated_capabilities_does_not_lock_the_admin_out(
    server_factory: Callable[..., Server], broker_url: str
) -> None:
    # Capabilities are stored whole (no bound on the Edge TPU list or the strings) and every
    # DeviceInfo carries them: one device's 4.3 MB made 'devices list' fail for the whole
    # fleet (the client's 4 MB limit; two such devices pass the server's 8 MB), and 'devices
    # revoke' of that very device revoked it but exited 1 with "resource exhausted".
    server = server_factory(broker_url)
    fleet, token = server.sim_fleet(), server.enrollment_token()
    honest = SimDevice.enroll(fleet, token, "honest")
    liar = SimDevice.enroll(fleet, token, "liar")
    liar.capabilities = _bloated(50_000)
    assert liar.capabilities.ByteSize() > 4 << 20
    try:
        liar.check_in()
    except grpc.RpcError as exc:  # refusing the lie is one way to hold
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    honest.check_in()

    time.sleep(3)  # the check-in writer stores changed capabilities every 2 s

    listed = server.admin("devices", "list", "--json", check=False)
    assert listed.returncode == 0, listed.stderr
    assert sorted(d["device_id"] for d in json.loads(listed.stdout)) == ["honest", "liar"]
    revoked = server.admin("devices", "revoke", "liar", check=False)
    assert revoked.returncode == 0, revoked.stderr
    honest.close()
    liar.close()


def test_devices_are_listed_in_pages_of_bounded_size(
    server_factory: Callable[..., Server], broker_url: str
) -> None:
    # One answer carried every device: a fleet of ~10,000 devices (or fewer that report much)
    # passes the admin client's 4 MB message limit whatever each device reports.
    from protos import admin_pb2, admin_pb2_grpc

    server = server_factory(broker_url)
    fleet, token = server.sim_fleet(), server.enrollment_token()
    names = [f"cam{i}" for i in range(5)]
    for name in names:
        SimDevice.enroll(fleet, token, name).close()
    admin_token = (server.data_dir / "admin.token").read_text().strip()
    credentials = grpc.ssl_channel_credentials(root_certificates=server.ca_file.read_bytes())
    pages, after = [], ""
    with grpc.secure_channel(server.address, credentials) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        while True:
            page = stub.ListDevices(
                admin_pb2.ListDevicesRequest(limit=2, after=after),
                metadata=[("authorization", f"Bearer {admin_token}")],
                timeout=30,
            )
            pages.append([d.device_id for d in page.devices])
            if not page.next_after:
                break
            after = page.next_after
    assert pages == [names[0:2], names[2:4], names[4:5]]
    # The CLI reads every page.
    assert sorted(d["device_id"] for d in server.devices()) == names


def test_status_reports_of_models_the_server_never_had_make_no_rows(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    # ReportStatus kept one row per (device, model name) it was told of: a device inventing
    # names grew the table, `devices show` and the fleet's model list without bound.
    server = server_factory(None)
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "color",
                 "--version", "1.0.0", "--deploy")  # fmt: skip
    liar = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "inventor")
    for i in range(50):
        liar.report(f"invented-{i}", "1.0.0", pb.FAILED, "made up")
    liar.report("color", "1.0.0", pb.INSTALLED, "real")
    shown = json.loads(server.admin("devices", "show", liar.device_id, "--json").stdout)
    names = {m["model_name"] for m in shown.get("models", [])}
    assert names == {"color"}, names
