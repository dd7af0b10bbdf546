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

__all__ = ["DeviceClient"]

log = logging.getLogger(__name__)
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_R = TypeVar("_R")


class DeviceClient:
    """Calls DeviceService with this device's bearer token."""

    def __init__(self, address: str, *, timeout_s: float, token: str = "") -> None:
        self.address = address
        self._timeout = timeout_s
        self._token = token
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        )
        self._stub = pb_grpc.DeviceServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def set_token(self, token: str) -> None:
        """Use ``token`` for every later call."""
        self._token = token

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._token}")] if self._token else []

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
        try:
            response: pb.EnrollResponse = self._call(
                "enrollment", lambda: self._stub.Enroll(request, timeout=self._timeout)
            )
        except ServerUnavailableError:
            raise
        except AgentError as exc:
            raise EnrollmentError(str(exc)) from exc
        return response

    def check_in(self, request: pb.CheckInRequest) -> pb.CheckInResponse:
        """Report state and receive the desired state."""
        response: pb.CheckInResponse = self._call(
            "check-in",
            lambda: self._stub.CheckIn(request, timeout=self._timeout, metadata=self._metadata()),
        )
        return response

    def report(self, report: pb.StatusReport) -> None:
        """Send an update status report (best effort: failures are logged, not raised)."""
        try:
            self._call(
                "status report",
                lambda: self._stub.ReportStatus(
                    report, timeout=self._timeout, metadata=self._metadata()
                ),
            )
        except AgentError as exc:
            log.warning("could not report status: %s", exc)

    def download(
        self,
        artifact_id: str,
        *,
        offset: int,
        expected_size: int,
        sink: Any,
        hasher: Any,
        deadline_s: float,
        max_bytes_per_s: int = 0,
    ) -> int:
        """Stream an artifact from ``offset`` into ``sink``, feeding ``hasher``; return bytes read.

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
        try:
            stream: Iterator[pb.ArtifactChunk] = self._stub.DownloadArtifact(
                request, timeout=deadline_s, metadata=self._metadata()
            )
            for chunk in stream:
                if chunk.total_size != expected_size:
                    raise ManifestError(
                        f"the server's artifact {artifact_id[:12]} has {chunk.total_size} bytes; "
                        f"the signed manifest names {expected_size}"
                    )
                if chunk.offset != position:
                    raise DownloadError(f"chunk at offset {chunk.offset}, expected {position}")
                position += len(chunk.data)
                if position > expected_size:
                    raise ManifestError(
                        f"server sent more than the {expected_size} bytes the manifest names"
                    )
                sink.write(chunk.data)
                hasher.update(chunk.data)
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
