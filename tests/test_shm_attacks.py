"""A hostile local app against the OIP API's shared memory (issue 20): objects truncated,
unlinked and resized while registered, foreign-owned and world-writable objects, symlinks and
FIFOs, and an agent running as root. The API runs in a process of its own as an unprivileged
user (nobody when the tests run as root); the test is the app."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc
from tests.harness import (
    REPO,
    Proc,
    app_folder,
    app_user,
    free_port,
    give_to_app_user,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow

SHM = Path("/dev/shm")  # noqa: S108 - where POSIX shared memory lives
A = np.array([[1.0, 2.0, 3.0, 4.0]], dtype="<f4")
B = np.array([[2.0, 2.0, 2.0, 2.0]], dtype="<f4")


@dataclass
class Api:
    stub: pb_grpc.GRPCInferenceServiceStub
    proc: Proc
    objects: list[Path]

    def make_object(
        self, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
    ) -> Path:
        """An object under /dev/shm as the app creates it (owned by ``app_user()``)."""
        path = SHM / f"edgefleet-test-{uuid.uuid4().hex[:12]}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            if os.geteuid() == 0:
                os.fchown(fd, *(owner or app_user()))
        finally:
            os.close(fd)
        self.objects.append(path)
        return path

    def register(self, name: str, path: Path, byte_size: int) -> None:
        request = pb.SystemSharedMemoryRegisterRequest(
            name=name, key=f"/{path.name}", byte_size=byte_size
        )
        self.stub.SystemSharedMemoryRegister(request, timeout=10)

    def alive(self) -> None:
        """The process runs and answers an inline request with the right sum."""
        assert self.proc.popen.poll() is None, self.proc.output()
        response = self.stub.ModelInfer(inline_request(), timeout=10)
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [3, 4, 5, 6]


def inline_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pair")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.extend([A.tobytes(), B.tobytes()])
    return request


def shm_request(region: str, out_region: str = "") -> pb.ModelInferRequest:
    """Both inputs from ``region`` (a at 0, b at 16); ``sum`` into ``out_region`` if given."""
    request = pb.ModelInferRequest(model_name="pair")
    for offset, name in ((0, "a"), (16, "b")):
        given = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        given.parameters["shared_memory_region"].string_param = region
        given.parameters["shared_memory_byte_size"].int64_param = 16
        if offset:
            given.parameters["shared_memory_offset"].int64_param = offset
    if out_region:
        out = request.outputs.add(name="sum")
        out.parameters["shared_memory_region"].string_param = out_region
        out.parameters["shared_memory_byte_size"].int64_param = 16
    return request


def refused(call: object, *args: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10)  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def serve(folder: Path, color_models: Path, *, as_root: bool = False) -> Proc:
    model = folder / "pair_float.tflite"
    shutil.copyfile(color_models / "pair_float.tflite", model)
    give_to_app_user(model)
    socket = folder / "oip.sock"
    cmd = [sys.executable, "-m", "tests.tools.oip_serve", str(socket), f"pair={model}"]
    proc = start(cmd, folder.parent / f"{folder.name}.log", cwd=REPO,
                 user=None if as_root else app_user())  # fmt: skip
    wait_for("the OIP API to listen", lambda: "ready" in proc.output() or proc.popen.poll(),
             timeout=60)  # fmt: skip
    assert proc.popen.poll() is None, proc.output()
    return proc


@pytest.fixture
def shm_api(color_models: Path) -> Iterator[Api]:
    with app_folder("edgefleet-shm-") as folder:
        proc = serve(folder, color_models)
        channel = grpc.insecure_channel(f"unix:{folder / 'oip.sock'}")
        found = Api(pb_grpc.GRPCInferenceServiceStub(channel), proc, [])
        try:
            yield found
        finally:
            channel.close()
            proc.stop()
            for path in found.objects:
                path.unlink(missing_ok=True)


def test_a_region_truncated_after_use_fails_that_request_only(shm_api: Api) -> None:
    # Issue 20: the agent mapped the object at registration; after the app truncated it to 0
    # bytes the next read of the mapping killed the agent with SIGBUS.
    path = shm_api.make_object(A.tobytes() + B.tobytes())
    out = shm_api.make_object(bytes(16))
    shm_api.register("in", path, 32)
    shm_api.register("out", out, 16)
    shm_api.stub.ModelInfer(shm_request("in", "out"), timeout=10)
    assert np.frombuffer(out.read_bytes(), "<f4").tolist() == [3, 4, 5, 6]
    os.truncate(path, 0)
    assert "truncated or resized" in refused(shm_api.stub.ModelInfer, shm_request("in"))
    shm_api.alive()
    # An output region truncated: refused too, and not grown back behind the app's back.
    os.truncate(path, 32)
    path.write_bytes(A.tobytes() + B.tobytes())
    os.truncate(out, 4)
    assert "truncated or resized" in refused(shm_api.stub.ModelInfer, shm_request("in", "out"))
    assert out.stat().st_size == 4
    shm_api.alive()


def test_unlinked_and_resized_objects_are_read_as_they_are_now(shm_api: Api) -> None:
    path = shm_api.make_object(A.tobytes() + B.tobytes())
    shm_api.register("in", path, 32)
    path.unlink()  # the app removes its name: the open object still holds the data
    response = shm_api.stub.ModelInfer(shm_request("in"), timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [3, 4, 5, 6]
    grown = shm_api.make_object(A.tobytes() + B.tobytes())
    shm_api.register("grown", grown, 32)
    os.truncate(grown, 1 << 20)  # larger: still fine
    shm_api.stub.ModelInfer(shm_request("grown"), timeout=10)
    os.truncate(grown, 20)  # smaller than the region: b is cut
    assert "ends before byte 20" in refused(shm_api.stub.ModelInfer, shm_request("grown"))
    shm_api.alive()


def test_an_app_truncating_in_a_loop_never_takes_the_api_down(shm_api: Api) -> None:
    path = shm_api.make_object(A.tobytes() + B.tobytes())
    shm_api.register("in", path, 32)
    stop = threading.Event()

    def flap() -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            while not stop.is_set():
                os.ftruncate(fd, 0)
                os.ftruncate(fd, 32)
                os.pwrite(fd, A.tobytes() + B.tobytes(), 0)
        finally:
            os.close(fd)

    flapper = threading.Thread(target=flap)
    flapper.start()
    answers = {"ok": 0, "refused": 0}
    try:
        for _ in range(300):
            try:
                response = shm_api.stub.ModelInfer(shm_request("in"), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                answers["refused"] += 1
            else:
                got = np.frombuffer(response.raw_output_contents[0], "<f4").tolist()
                assert got in ([3, 4, 5, 6], [0, 0, 0, 0], [1, 2, 3, 4], [2, 2, 2, 2]), got
                answers["ok"] += 1
    finally:
        stop.set()
        flapper.join()
    print(f"300 requests against a flapping object: {answers}")
    shm_api.alive()


def test_objects_the_agent_may_not_use_are_refused(shm_api: Api) -> None:
    data = A.tobytes() + B.tobytes()
    world = shm_api.make_object(data, mode=0o666)
    assert "writable by every user" in refused(shm_api.stub.SystemSharedMemoryRegister,
                                               _register("w", world))  # fmt: skip
    target = shm_api.make_object(data)
    link = SHM / f"edgefleet-test-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(target)
    shm_api.objects.append(link)
    assert "not a regular file" in refused(shm_api.stub.SystemSharedMemoryRegister,
                                           _register("l", link))  # fmt: skip
    fifo = SHM / f"edgefleet-test-fifo-{uuid.uuid4().hex[:8]}"
    os.mkfifo(fifo, 0o600)
    shm_api.objects.append(fifo)
    if os.geteuid() == 0:
        os.chown(fifo, *app_user())
    assert "not a regular file" in refused(shm_api.stub.SystemSharedMemoryRegister,
                                           _register("f", fifo))  # fmt: skip
    if os.geteuid() == 0:
        # Issue 20: as root, the agent wrote into a nobody-owned 0600 object. Here the agent is
        # nobody and may open an object of root's (its group's mode lets it), but root is no
        # member of the API socket's group.
        foreign = shm_api.make_object(data, mode=0o660, owner=(0, app_user()[1]))
        assert "owned by uid 0" in refused(shm_api.stub.SystemSharedMemoryRegister,
                                           _register("x", foreign))  # fmt: skip
        assert foreign.read_bytes() == data
    status = shm_api.stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=10)
    assert not status.regions
    shm_api.alive()


def _register(name: str, path: Path) -> pb.SystemSharedMemoryRegisterRequest:
    return pb.SystemSharedMemoryRegisterRequest(name=name, key=f"/{path.name}", byte_size=32)


@pytest.mark.skipif(os.geteuid() != 0, reason="starting the API as root needs root")
def test_registration_is_refused_while_the_agent_runs_as_root(color_models: Path) -> None:
    with app_folder("edgefleet-shm-root-") as folder:
        proc = serve(folder, color_models, as_root=True)
        api = Api(pb_grpc.GRPCInferenceServiceStub(
            grpc.insecure_channel(f"unix:{folder / 'oip.sock'}")), proc, [])  # fmt: skip
        try:
            path = api.make_object(A.tobytes() + B.tobytes(), owner=(0, 0))
            assert "runs as root" in refused(api.stub.SystemSharedMemoryRegister,
                                             _register("r", path))  # fmt: skip
            api.alive()
        finally:
            proc.stop()
            for each in api.objects:
                each.unlink(missing_ok=True)


def test_shared_memory_is_refused_to_callers_over_tcp(color_models: Path) -> None:
    # A caller over TCP is on another host (or pretends to be): /dev/shm here is not its, and
    # the agent's own objects would be its to read and write.
    with app_folder("edgefleet-shm-tcp-") as folder:
        model = folder / "pair_float.tflite"
        shutil.copyfile(color_models / "pair_float.tflite", model)
        give_to_app_user(model)
        port = free_port()
        cmd = [sys.executable, "-m", "tests.tools.oip_serve", str(folder / "oip.sock"),
               "--listen", f"127.0.0.1:{port}", f"pair={model}"]  # fmt: skip
        proc = start(cmd, folder.parent / f"{folder.name}.log", cwd=REPO, user=app_user())
        wait_for("the API", lambda: "ready" in proc.output() or proc.popen.poll(), timeout=60)
        try:
            tcp = Api(pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(
                f"127.0.0.1:{port}")), proc, [])  # fmt: skip
            path = tcp.make_object(A.tobytes() + B.tobytes())
            with pytest.raises(grpc.RpcError) as info:
                tcp.register("in", path, 32)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "unix socket only" in str(info.value.details())
            local = Api(pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(
                f"unix:{folder / 'oip.sock'}")), proc, tcp.objects)  # fmt: skip
            local.register("in", path, 32)  # the same object, from this device: fine
            tcp.alive()
        finally:
            proc.stop()
            for each in tcp.objects:
                each.unlink(missing_ok=True)
