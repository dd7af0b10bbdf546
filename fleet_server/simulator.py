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

from agent.client import device_target
from agent.identity import new_key_and_csr
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos import manifest_pb2
from protos.topics import device_name

__all__ = ["SimDevice", "SimFleet"]


def _default_capabilities() -> pb.Capabilities:
    return pb.Capabilities(arch="x86_64", cpu_cores=4, memory_bytes=4 << 30, runtime="simulated")


@dataclass(frozen=True)
class SimFleet:
    """Where simulated devices enroll: the server's main address and its CA."""

    address: str
    ca_pem: bytes


@dataclass
class SimDevice:
    """One simulated device with its own key, certificate and mTLS channel."""

    stub: pb_grpc.DeviceServiceStub
    device_id: str = ""
    channel: grpc.Channel | None = None
    credentials: grpc.ChannelCredentials | None = None
    running: dict[str, str] = field(default_factory=dict)  # model -> version
    fail_versions: Collection[str] = ()
    failed: set[tuple[str, str]] = field(default_factory=set)
    capabilities: pb.Capabilities = field(default_factory=_default_capabilities)
    # Its credentials, for an MQTT connection of its own (the brokers know devices by them).
    key_pem: bytes = b""
    certificate_pem: bytes = b""
    ca_pem: bytes = b""

    @classmethod
    def enroll(
        cls,
        fleet: SimFleet,
        enrollment_token: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        fail_versions: Collection[str] = (),
        capabilities: pb.Capabilities | None = None,
    ) -> SimDevice:
        """Enroll a new simulated device (a fresh key and CSR, like an agent)."""
        name = device_name(name)
        key_pem, csr_pem = new_key_and_csr(name)
        with grpc.secure_channel(
            fleet.address, grpc.ssl_channel_credentials(root_certificates=fleet.ca_pem)
        ) as bootstrap:
            request = pb.EnrollRequest(
                enrollment_token=enrollment_token,
                requested_name=name,
                capabilities=capabilities or _default_capabilities(),
                labels=labels or {},
                csr_pem=csr_pem,
            )
            response = pb_grpc.DeviceServiceStub(bootstrap).Enroll(request, timeout=30)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=fleet.ca_pem,
            private_key=key_pem,
            certificate_chain=response.certificate_pem,
        )
        channel = grpc.secure_channel(
            device_target(fleet.address, response.device_address), credentials
        )
        device = cls(
            pb_grpc.DeviceServiceStub(channel),
            device_id=response.device_id,
            channel=channel,
            credentials=credentials,
            fail_versions=fail_versions,
            key_pem=key_pem,
            certificate_pem=response.certificate_pem,
            ca_pem=fleet.ca_pem,
        )
        if capabilities is not None:
            device.capabilities = capabilities
        return device

    def reconnect(self, device_address: str) -> None:
        """Dial the device port at another address (a restarted server), same certificate."""
        self.close()
        self.channel = grpc.secure_channel(device_address, self.credentials)
        self.stub = pb_grpc.DeviceServiceStub(self.channel)

    def close(self) -> None:
        """Close the device's channel."""
        if self.channel is not None:
            self.channel.close()

    def check_in(self, act: bool = True) -> pb.CheckInResponse:
        """Check in; with ``act``, "install" whatever new version the answer names."""
        request = pb.CheckInRequest(
            capabilities=self.capabilities,
            active=[pb.ActiveModel(model_name=m, version=v) for m, v in self.running.items()],
        )
        response: pb.CheckInResponse = self.stub.CheckIn(request, timeout=30)
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
        )
