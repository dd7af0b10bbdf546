"""The agent's side of the device API: a gRPC channel to the fleet server.

Third-party errors become ours here: UNAVAILABLE and DEADLINE_EXCEEDED are transient
(:class:`ServerUnavailableError`), everything else is fatal for that call.

Dead connections are noticed three ways (docs/security.md, "Dead connections"): keepalive pings
(``protos/keepalive.py``), a download that receives nothing for ``stall_timeout_s`` is cancelled,
and after :data:`FRESH_CHANNEL_AFTER` transient failures in a row the channel is closed and
opened anew, so that calls stop going into a connection whose far end vanished.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from agent.config import ServerSection
from agent.errors import (
    AgentError,
    DownloadError,
    DownloadStalledError,
    EnrollmentError,
    ManifestError,
    ServerUnavailableError,
)
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos.chunks import parse_chunk
from protos.keepalive import client_options

__all__ = [
    "FRESH_CHANNEL_AFTER",
    "DeviceClient",
    "device_target",
    "pace",
    "stall_limit",
]

log = logging.getLogger(__name__)
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_R = TypeVar("_R")


FRESH_CHANNEL_AFTER = 2  # transient failures in a row that abandon the channel's connection
_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    # Each channel its own connections: a fresh channel must not be handed the wedged connection
    # of the one it replaces from grpc's process-wide subchannel pool.
    ("grpc.use_local_subchannel_pool", 1),
    *client_options(),
]
_DOWNLOAD = f"/{pb.DESCRIPTOR.services_by_name['DeviceService'].full_name}/DownloadArtifact"


def pace(sent: int, started: float, max_bytes_per_s: int) -> None:
    """Sleep until ``sent`` bytes since ``started`` (monotonic) are within ``max_bytes_per_s``
    (0: no limit): the download bandwidth limit, whatever the source."""
    if max_bytes_per_s:
        ahead = sent / max_bytes_per_s - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def stall_limit(base_s: float, fruitless: int, deadline_s: float) -> float:
    """How long a download may wait for its next chunk: ``base_s``, doubled for each stall in a
    row in which not one chunk arrived, never past the download's deadline. The server sends
    1 MiB chunks: on a link too thin to carry one in ``base_s`` the download must still move on
    (what arrived is kept only chunk by chunk)."""
    return min(base_s * 2 ** min(fruitless, 16), max(base_s, deadline_s))


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


@dataclass(frozen=True)
class _Wire:
    """One gRPC channel and the device calls made on it."""

    channel: grpc.Channel
    stub: pb_grpc.DeviceServiceStub
    download: Any  # DownloadArtifact, its chunks read by parse_chunk


class _FreshChannel:
    """A channel to one target that is closed and opened anew after
    :data:`FRESH_CHANNEL_AFTER` transient failures in a row: calls stop going into a wedged
    connection (a vanished NAT entry, a stalled proxy) and the next one dials afresh. Any answer
    from the server, even a refusal, counts as success. Safe to use from several threads."""

    def __init__(self, targets: str | list[str], credentials: grpc.ChannelCredentials) -> None:
        # Several targets are server replicas: a fresh channel goes to the next one. One named
        # twice (an operator's "a, a, b") is one replica: the next of a is b, never a again.
        self.targets = list(dict.fromkeys([targets] if isinstance(targets, str) else targets))
        self.target = self.targets[0]
        self._credentials = credentials
        self._lock = threading.Lock()
        self._failures = 0
        self.wire = self._open()

    def _open(self) -> _Wire:
        channel = grpc.secure_channel(self.target, self._credentials, options=_OPTIONS)
        return _Wire(
            channel,
            pb_grpc.DeviceServiceStub(channel),
            channel.unary_stream(
                _DOWNLOAD,
                request_serializer=pb.DownloadRequest.SerializeToString,
                response_deserializer=parse_chunk,
            ),
        )

    def succeeded(self, wire: _Wire) -> None:
        """The server answered a call made on ``wire``."""
        with self._lock:
            if wire is self.wire:
                self._failures = 0

    def failed(self, wire: _Wire) -> None:
        """A call made on ``wire`` found no server (UNAVAILABLE, DEADLINE_EXCEEDED, a stall);
        the last of :data:`FRESH_CHANNEL_AFTER` in a row replaces the channel."""
        with self._lock:
            if wire is not self.wire:
                return  # that channel is gone already
            self._failures += 1
            if self._failures < FRESH_CHANNEL_AFTER:
                return
            self._failures = 0
            gone = self.target
            self.target = self.targets[(self.targets.index(gone) + 1) % len(self.targets)]
            self.wire = self._open()
        log.warning(
            "%d calls to %s in a row went unanswered; dropping that connection for a new one%s",
            FRESH_CHANNEL_AFTER,
            gone,
            f" to {self.target}" if self.target != gone else "",
        )
        wire.channel.close()  # its calls in flight end CANCELLED (see DeviceClient._call)

    def replaced(self, wire: _Wire) -> bool:
        """Whether the channel ``wire`` belongs to was closed for a fresh one."""
        return wire is not self.wire

    def close(self) -> None:
        self.wire.channel.close()


class _StallWatch:
    """Cancels a streaming call when no message arrived for ``limit_s`` seconds. Time spent
    on a message (writing it, pacing) does not count: only waiting for the next one. One
    thread per call, not per message, and it is joined when the ``with`` block ends."""

    def __init__(self, call: Any, limit_s: float) -> None:
        self._call = call
        self._limit = limit_s
        self._waiting_since: float | None = time.monotonic()
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="download-stall", daemon=True)

    def __enter__(self) -> _StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def arrived(self) -> None:
        """A message came: the clock stops while the caller handles it."""
        self._waiting_since = None

    def waiting(self) -> None:
        """The caller waits for the next message from now on."""
        self._waiting_since = time.monotonic()

    def _run(self) -> None:
        wait = self._limit
        while not self._done.wait(wait):
            since = self._waiting_since
            if since is None:
                wait = self._limit
                continue
            idle = time.monotonic() - since
            if idle >= self._limit:
                self.fired = True
                self._call.cancel()  # the caller's next() raises CANCELLED
                return
            wait = self._limit - idle


class DeviceClient:
    """Enrolls over TLS on the server's main port, then calls DeviceService on its device port
    with this device's client certificate (mTLS).

    ``timeout_s`` bounds each unary call; ``stall_timeout_s`` is how long a download may receive
    nothing before it is cancelled (what arrived stays, to resume from); its default is the
    config's (``[server]``).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float,
        stall_timeout_s: float = ServerSection.stall_timeout_s,
        ca_pem: bytes = b"",
    ) -> None:
        # One address, or several replicas' separated by commas (tried in turn).
        self.addresses = [a.strip() for a in address.split(",") if a.strip()] or [address]
        self.address = self.addresses[0]
        self._timeout = timeout_s
        self._stall = stall_timeout_s
        self._fruitless = 0  # downloads in a row that stalled before their first chunk
        self._ca_pem = ca_pem
        self._bootstrap: _FreshChannel | None = None
        self._channel: _FreshChannel | None = None
        self.device_address = ""
        # Called with every status report: the agent spools it as an event (MQTT) ...
        self.on_report: Callable[[pb.StatusReport], bool] | None = None
        # ... and delivers its outbox over this API; False: this server does not take outboxes.
        self.deliver_outbox: Callable[[], bool] | None = None

    def close(self) -> None:
        """Close the channels."""
        for channel in (self._bootstrap, self._channel):
            if channel is not None:
                channel.close()

    def set_fleet_ca(self, ca_pem: bytes) -> None:
        """Check the enrollment port's certificate against ``ca_pem`` from now on (the agent
        reads its CA file at each enrollment attempt: a file fixed meanwhile counts)."""
        if ca_pem == self._ca_pem:
            return
        self._ca_pem = ca_pem
        if self._bootstrap is not None:
            self._bootstrap.close()
            self._bootstrap = None

    def use_certificate(
        self, device_address: str, *, certificate_pem: bytes, key_pem: bytes, ca_pem: bytes
    ) -> None:
        """Call the device port with this client certificate from now on."""
        if self._channel is not None:
            self._channel.close()
        targets = [device_target(address, device_address) for address in self.addresses]
        self.device_address = targets[0]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=certificate_pem
        )
        self._channel = _FreshChannel(targets, credentials)

    @property
    def _device(self) -> _FreshChannel:
        if self._channel is None:
            raise AgentError("not enrolled yet: no device certificate")
        return self._channel

    def _call(self, what: str, channel: _FreshChannel, fn: Callable[[_Wire], _R]) -> _R:
        wire = channel.wire
        try:
            result = fn(wire)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code in _TRANSIENT:
                channel.failed(wire)
                raise ServerUnavailableError(
                    f"fleet server {channel.target} unreachable during {what}: {details}"
                ) from exc
            if code == grpc.StatusCode.CANCELLED and channel.replaced(wire):
                raise ServerUnavailableError(
                    f"{what} to {channel.target} cut short: its connection was dropped for a new "
                    "one after calls went unanswered"
                ) from exc
            channel.succeeded(wire)
            raise AgentError(f"{what} refused by {channel.target}: {code.name}: {details}") from exc
        channel.succeeded(wire)
        return result

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
            self._bootstrap = _FreshChannel(self.addresses, credentials)
        try:
            response: pb.EnrollResponse = self._call(
                "enrollment",
                self._bootstrap,
                lambda wire: wire.stub.Enroll(request, timeout=self._timeout),
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
            self._device,
            lambda wire: wire.stub.RenewCertificate(
                pb.RenewRequest(csr_pem=csr_pem), timeout=self._timeout
            ),
        )
        return response.certificate_pem

    def check_in(self, request: pb.CheckInRequest) -> pb.CheckInResponse:
        """Report state and receive the desired state."""
        response: pb.CheckInResponse = self._call(
            "check-in",
            self._device,
            lambda wire: wire.stub.CheckIn(request, timeout=self._timeout),
        )
        return response

    def report(self, report: pb.StatusReport) -> None:
        """Report an update status (failures are logged, not raised). It is spooled as an event
        and delivered with the outbox, again at every check-in until the server has stored it;
        to a server without outboxes (or when the spool cannot take it) it is sent once, as
        before."""
        spooled = False
        if self.on_report is not None:
            try:
                spooled = self.on_report(report)
            except Exception:
                log.exception("could not spool the update event; sending it once")
        if spooled and self.deliver_outbox is not None:
            try:
                if self.deliver_outbox():
                    return
            except AgentError as exc:
                log.warning("update event kept for the next check-in: %s", exc)
                return
        try:
            self._call(
                "status report",
                self._device,
                lambda wire: wire.stub.ReportStatus(report, timeout=self._timeout),
            )
        except AgentError as exc:
            log.warning("could not report status: %s", exc)

    def deliver(self, outbox: pb.Outbox) -> pb.Delivery | None:
        """Deliver the outbox; what the server has stored of this device's messages, or None
        from a server too old to take outboxes.

        Raises:
            AgentError: the server is unreachable or refused it.
        """
        try:
            response: pb.Delivery = self._call(
                "delivery",
                self._device,
                lambda wire: wire.stub.Deliver(outbox, timeout=self._timeout),
            )
        except AgentError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return response

    def report_benchmark(self, report: pb.BenchmarkReport) -> None:
        """Send a benchmark result.

        Raises:
            AgentError: the server is unreachable or refused it.
        """
        self._call(
            "benchmark report",
            self._device,
            lambda wire: wire.stub.ReportBenchmark(report, timeout=self._timeout),
        )

    def upload_log(self, messages: Iterator[pb.LogUpload]) -> pb.LogReceipt:
        """Upload the recent log an operator asked for (the messages of
        :func:`agent.logs.parts`).

        Raises:
            ServerUnavailableError: the server could not be reached.
            AgentError: the server refused it.
        """
        response: pb.LogReceipt = self._call(
            "log upload",
            self._device,
            lambda wire: wire.stub.UploadLog(messages, timeout=self._timeout),
        )
        return response

    def download_url(self, artifact_id: str) -> str | None:
        """A short-lived URL of the fleet's object store for the artifact, or None (none
        configured, or a server from before GetDownloadUrl).

        Raises:
            ServerUnavailableError, AgentError: the server could not be asked, or refused.
        """
        try:
            answer: pb.DownloadUrl = self._call(
                "download URL",
                self._device,
                lambda wire: wire.stub.GetDownloadUrl(
                    pb.DownloadUrlRequest(artifact_id=artifact_id), timeout=self._timeout
                ),
            )
        except AgentError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None  # a server from before GetDownloadUrl
            raise
        return answer.url or None

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
        keeps bandwidth for its own traffic. Waiting ``stall_timeout_s`` for a chunk cancels it
        (longer after stalls that brought no chunk at all: :func:`stall_limit`).

        Raises:
            DownloadStalledError: nothing arrived for ``stall_timeout_s`` (the download resumes
                from what was written).
            DownloadError: the stream broke (worth retrying: the download resumes).
            ManifestError: the server's artifact is not the size the signed manifest names, or
                it sends more bytes than that (endless data): not worth retrying.
        """
        request = pb.DownloadRequest(artifact_id=artifact_id, offset=offset)
        position = offset
        started = time.monotonic()
        channel = self._device
        wire = channel.wire
        call = wire.download(request, timeout=deadline_s)
        limit = stall_limit(self._stall, self._fruitless, deadline_s)
        watch = _StallWatch(call, limit)
        try:
            with watch:
                stream: Iterator[tuple[int, memoryview, int]] = call
                for at, data, total in stream:
                    watch.arrived()
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
                    pace(position - offset, started, max_bytes_per_s)
                    watch.waiting()
        except grpc.RpcError as exc:
            if watch.fired:
                channel.failed(wire)
                self._fruitless = self._fruitless + 1 if position == offset else 0
                raise DownloadStalledError(
                    f"download of {artifact_id} stalled at byte {position}: nothing arrived for "
                    f"{limit:g} s; it resumes from there at the next try"
                ) from exc
            if exc.code() in _TRANSIENT:
                channel.failed(wire)
            raise DownloadError(
                f"download of {artifact_id} stopped at byte {position}: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
        finally:
            call.cancel()  # a no-op once the stream ended; else the server stops sending
        channel.succeeded(wire)
        self._fruitless = 0
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
