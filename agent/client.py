"""The agent's side of the device API: a gRPC channel to the fleet server.

Third-party errors become ours here: UNAVAILABLE and DEADLINE_EXCEEDED are transient
(:class:`ServerUnavailableError`), everything else is fatal for that call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from agent.errors import (
    AgentError,
    DownloadError,
    EnrollmentError,
    ManifestError,
    ServerUnavailableError,
)
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos.chunks import parse_chunk

__all__ = ["DeviceClient", "device_target"]

log = logging.getLogger(__name__)
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_R = TypeVar("_R")


_OPTIONS = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
_DOWNLOAD = f"/{pb.DESCRIPTOR.services_by_name['DeviceService'].full_name}/DownloadArtifact"


def device_target(server_address: str, advertised: str) -> str:
    """Where to dial the device port: the advertised address, or (when it names only a port,
    ":7444") the host the device enrolled through with that port."""
    if not advertised.startswith(":"):
        return advertised
    host = server_address.rsplit(":", 1)[0] if ":" in server_address else server_address
    return f"{host}{advertised}"


def with_server_host(url: str, server_address: str) -> str:
    """A URL of one of the server's own services that names only a port ("mqtts://:8883",
    "grpcs://:8443": the service listens on any address) -> that port on the host this agent
    reaches the fleet server on; any other URL as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest.startswith(":"):
        return url
    host = server_address.rsplit(":", 1)[0]
    return f"{scheme}://{host}{rest}"


class DeviceClient:
    """Enrolls over TLS on the server's main port, then calls DeviceService on its device port
    with this device's client certificate (mTLS)."""

    def __init__(self, address: str, *, timeout_s: float, ca_pem: bytes = b"") -> None:
        self.address = address
        self._timeout = timeout_s
        self._ca_pem = ca_pem
        self._bootstrap: grpc.Channel | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.DeviceServiceStub | None = None
        self._download: Any = None
        self.device_address = ""
        # Called with every status report (the agent also sends them as MQTT events).
        self.on_report: Callable[[pb.StatusReport], None] | None = None

    def close(self) -> None:
        """Close the channels."""
        for channel in (self._bootstrap, self._channel):
            if channel is not None:
                channel.close()

    def use_certificate(
        self, device_address: str, *, certificate_pem: bytes, key_pem: bytes, ca_pem: bytes
    ) -> None:
        """Call the device port with this client certificate from now on."""
        if self._channel is not None:
            self._channel.close()
        self.device_address = device_target(self.address, device_address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=certificate_pem
        )
        self._channel = grpc.secure_channel(self.device_address, credentials, options=_OPTIONS)
        self._stub = pb_grpc.DeviceServiceStub(self._channel)
        self._download = self._channel.unary_stream(
            _DOWNLOAD,
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=parse_chunk,
        )

    @property
    def _device(self) -> pb_grpc.DeviceServiceStub:
        if self._stub is None:
            raise AgentError("not enrolled yet: no device certificate")
        return self._stub

    def _call(self, what: str, fn: Callable[[], _R]) -> _R:
        try:
            return fn()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code in _TRANSIENT:
                raise ServerUnavailableError(
                    f"fleet server {self.address} unreachable during {what}: {details}"
                ) from exc
            raise AgentError(f"{what} refused by {self.address}: {code.name}: {details}") from exc

    def enroll(self, request: pb.EnrollRequest) -> pb.EnrollResponse:
        """Exchange an enrollment token for an identity.

        Raises:
            EnrollmentError: the server refused the token or the request.
            ServerUnavailableError: the server could not be reached.
        """
        if not self._ca_pem:
            raise EnrollmentError(
                "no fleet CA to check the server with: set server.ca_file to a copy of the "
                "server's DATA_DIR/ca/ca.crt"
            )
        if self._bootstrap is None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
            self._bootstrap = grpc.secure_channel(self.address, credentials, options=_OPTIONS)
        stub = pb_grpc.DeviceServiceStub(self._bootstrap)
        try:
            response: pb.EnrollResponse = self._call(
                "enrollment", lambda: stub.Enroll(request, timeout=self._timeout)
            )
        except ServerUnavailableError:
            raise
        except AgentError as exc:
            raise EnrollmentError(str(exc)) from exc
        return response

    def renew(self, csr_pem: bytes) -> bytes:
        """A new client certificate (PEM) for the key behind ``csr_pem``."""
        response: pb.RenewResponse = self._call(
            "certificate renewal",
            lambda: self._device.RenewCertificate(
                pb.RenewRequest(csr_pem=csr_pem), timeout=self._timeout
            ),
        )
        return response.certificate_pem

    def check_in(self, request: pb.CheckInRequest) -> pb.CheckInResponse:
        """Report state and receive the desired state."""
        response: pb.CheckInResponse = self._call(
            "check-in",
            lambda: self._device.CheckIn(request, timeout=self._timeout),
        )
        return response

    def report(self, report: pb.StatusReport) -> None:
        """Send an update status report (best effort: failures are logged, not raised)."""
        if self.on_report is not None:
            try:
                self.on_report(report)
            except Exception:
                log.exception("could not spool the update event")
        try:
            self._call(
                "status report",
                lambda: self._device.ReportStatus(report, timeout=self._timeout),
            )
        except AgentError as exc:
            log.warning("could not report status: %s", exc)

    def report_benchmark(self, report: pb.BenchmarkReport) -> None:
        """Send a benchmark result.

        Raises:
            AgentError: the server is unreachable or refused it.
        """
        self._call(
            "benchmark report",
            lambda: self._device.ReportBenchmark(report, timeout=self._timeout),
        )

    def download(
        self,
        artifact_id: str,
        *,
        offset: int,
        expected_size: int,
        sink: Any,
        deadline_s: float,
        max_bytes_per_s: int = 0,
    ) -> int:
        """Stream an artifact from ``offset`` into ``sink`` (its ``write``); return bytes read.

        ``max_bytes_per_s`` (0 = unlimited) paces the download so that a device on a thin link
        keeps bandwidth for its own traffic.

        Raises:
            DownloadError: the stream broke (worth retrying: the download resumes).
            ManifestError: the server's artifact is not the size the signed manifest names, or
                it sends more bytes than that (endless data): not worth retrying.
        """
        request = pb.DownloadRequest(artifact_id=artifact_id, offset=offset)
        position = offset
        started = time.monotonic()
        if self._download is None:
            raise AgentError("not enrolled yet: no device certificate")
        try:
            stream: Iterator[tuple[int, memoryview, int]] = self._download(
                request, timeout=deadline_s
            )
            for at, data, total in stream:
                if total != expected_size:
                    raise ManifestError(
                        f"the server's artifact {artifact_id[:12]} has {total} bytes; "
                        f"the signed manifest names {expected_size}"
                    )
                if at != position:
                    raise DownloadError(f"chunk at offset {at}, expected {position}")
                position += len(data)
                if position > expected_size:
                    raise ManifestError(
                        f"server sent more than the {expected_size} bytes the manifest names"
                    )
                sink.write(data)
                if max_bytes_per_s:
                    ahead = (position - offset) / max_bytes_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except grpc.RpcError as exc:
            raise DownloadError(
                f"download of {artifact_id} stopped at byte {position}: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
        return position - offset


def sha256_of_prefix(path: Any, length: int) -> Any:
    """A sha256 object fed with the first ``length`` bytes of ``path`` (to resume a download)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:  # noqa: PTH123 - path may be str or Path
        remaining = length
        while remaining:
            block = handle.read(min(remaining, 1 << 20))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
    return hasher
