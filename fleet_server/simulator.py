"""Simulated devices: enroll, check in and report through the real device API.

For load tests, benchmarks and rollout rehearsals at a scale real agents cannot reach on one
machine. A simulated device does not download or verify models: when its desired state names a
version it does not run, it reports INSTALLED (or FAILED, for versions it is told to fail) and
runs it from then on. Everything on the server side is the real thing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import grpc

from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos import manifest_pb2

__all__ = ["SimDevice"]


@dataclass
class SimDevice:
    """One simulated device on a shared channel."""

    stub: pb_grpc.DeviceServiceStub
    device_id: str = ""
    token: str = ""
    running: dict[str, str] = field(default_factory=dict)  # model -> version
    fail_versions: Collection[str] = ()
    failed: set[tuple[str, str]] = field(default_factory=set)
    capabilities: pb.Capabilities = field(
        default_factory=lambda: pb.Capabilities(
            arch="x86_64", cpu_cores=4, memory_bytes=4 << 30, runtime="simulated"
        )
    )

    @classmethod
    def enroll(
        cls,
        channel: grpc.Channel,
        enrollment_token: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        fail_versions: Collection[str] = (),
        capabilities: pb.Capabilities | None = None,
    ) -> SimDevice:
        """Enroll a new simulated device."""
        stub = pb_grpc.DeviceServiceStub(channel)
        device = cls(stub, fail_versions=fail_versions)
        if capabilities is not None:
            device.capabilities = capabilities
        response = stub.Enroll(
            pb.EnrollRequest(
                enrollment_token=enrollment_token,
                requested_name=name,
                capabilities=device.capabilities,
                labels=labels or {},
            ),
            timeout=30,
        )
        device.device_id = response.device_id
        device.token = response.device_token
        return device

    @property
    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def check_in(self, act: bool = True) -> pb.CheckInResponse:
        """Check in; with ``act``, "install" whatever new version the answer names."""
        request = pb.CheckInRequest(
            capabilities=self.capabilities,
            active=[pb.ActiveModel(model_name=m, version=v) for m, v in self.running.items()],
        )
        response: pb.CheckInResponse = self.stub.CheckIn(
            request, timeout=30, metadata=self._metadata
        )
        if act:
            for envelope in response.desired:
                self._apply(manifest_pb2.Manifest.FromString(envelope.payload))
        return response

    def _apply(self, manifest: manifest_pb2.Manifest) -> None:
        name, version = manifest.model_name, manifest.version
        if self.running.get(name) == version or (name, version) in self.failed:
            return
        if version in self.fail_versions:
            self.failed.add((name, version))
            self.report(name, version, pb.FAILED, "simulated failure")
            return
        self.running[name] = version
        self.report(name, version, pb.INSTALLED, "simulated install")

    def report(self, model: str, version: str, state: int, detail: str = "") -> None:
        """Send an update status report."""
        self.stub.ReportStatus(
            pb.StatusReport(model_name=model, version=version, state=state, detail=detail),  # type: ignore[arg-type]
            timeout=30,
            metadata=self._metadata,
        )
