"""Open Inference Protocol v2 over gRPC, served from the agent's loaded models.

Standard clients (tritonclient, KServe/MLServer clients) call this on the agent's unix socket or
TCP port. Tensors travel as ``raw_input_contents``/``raw_output_contents`` (little-endian bytes)
or typed ``contents``; responses say which path served them in their parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.errors import AgentError
from agent.inference.engine import Engine
from agent.inference.serving import RequestError, Serving, on_socket, uses_shm
from agent.inference.shm import SharedMemoryRegistry
from agent.inference.status import AgentFacts, add_status_service
from agent.inference.tensors import DTYPE_TO_OIP, OIP_TO_DTYPE
from agent.ports import PortInUseError, unix_socket_in_use
from agent.routing.router import Router
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

__all__ = [
    "CLIENT_ID_KEY",
    "DTYPE_TO_OIP",
    "OIP_TO_DTYPE",
    "InferenceServicer",
    "client_id",
    "create_server",
    "valid_client_id",
]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


CLIENT_ID_KEY = "edgefleet-client-id"  # request metadata (REST: a header): an app's name
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:@/-]{1,64}")


def valid_client_id(value: object) -> str:
    """``value`` when it is a well-formed client id, else "" (absent or malformed)."""
    return value if isinstance(value, str) and _CLIENT_ID.fullmatch(value) else ""


def client_id(context: Any) -> str:
    """The app's self-chosen id from the call's metadata ("" when absent or malformed)."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_KEY and valid_client_id(value):
            return str(value)
    return ""


def _socket_only(context: Any) -> None:
    """Abort a shared-memory call that did not come through the unix socket."""
    if not on_socket(context):
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "shared memory is served on the agent's unix socket only, not over TCP",
        )


def _abort(context: Any, exc: RequestError) -> NoReturn:
    context.abort(exc.code, exc.message)
    raise exc  # unreachable: abort raises


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """OIP v2 over gRPC: each handler calls :class:`Serving` and maps its errors to statuses."""

    def __init__(
        self,
        engine: Engine,
        *,
        is_ready: Callable[[], bool] | None = None,
        shm: SharedMemoryRegistry | None = None,
        router: Router | None = None,
    ) -> None:
        self._serving = Serving(engine, is_ready=is_ready, shm=shm, router=router)
        self._shm = self._serving.shm

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.ready())

    def ready(self) -> bool:
        """Whether the API serves: at least one model is ready (or what the agent says)."""
        return self._serving.ready()

    def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return self._serving.server_metadata(shared_memory=on_socket(context))

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        return pb.ModelReadyResponse(
            ready=bool(self._serving.model_ready(request.name, request.version))
        )

    def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        try:
            return self._serving.model_metadata(request.name, request.version)
        except RequestError as exc:
            _abort(context, exc)

    def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        try:
            return self._serving.model_config(request.name, request.version)
        except RequestError as exc:
            _abort(context, exc)

    def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        try:
            return self._serving.statistics(request.name, request.version)
        except RequestError as exc:
            _abort(context, exc)

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        if uses_shm(request):
            _socket_only(context)
        try:
            return self._serving.infer(request, client_id(context))
        except RequestError as exc:
            _abort(context, exc)

    def SystemSharedMemoryStatus(  # noqa: N802
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        _socket_only(context)
        try:
            regions = self._shm.status(request.name)
        except AgentError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        response = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            response.regions[r.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                )
            )
        return response

    def SystemSharedMemoryRegister(  # noqa: N802
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        _socket_only(context)
        try:
            self._shm.register(request.name, request.key, request.offset, request.byte_size)
        except AgentError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(  # noqa: N802
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        _socket_only(context)
        self._shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return self._serving.repository_index(ready_only=request.ready)

    def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        try:
            self._serving.load(request.model_name)
        except RequestError as exc:
            _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            self._serving.unload(request.model_name)
        except RequestError as exc:
            _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()


class _Health(health.HealthServicer):
    """The standard gRPC health service (``grpc.health.v1``, what ``grpc_health_probe`` and
    Kubernetes ask): SERVING while at least one model is ready, for "" and for the inference
    service's name. Each Check looks afresh, and tells watchers of a change it finds."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
        status = (health_pb2.HealthCheckResponse.SERVING if self._ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)  # fmt: skip
        for service in ("", SERVICE_NAME):
            self.set(service, status)
        return super().Check(request, context)


SERVICE_NAME = "inference.GRPCInferenceService"


def create_server(
    engine: Engine,
    *,
    socket_path: Path | None = None,
    tcp_address: str | None = None,
    max_workers: int = 64,
    max_concurrent_rpcs: int = 1024,
    is_ready: Callable[[], bool] | None = None,
    router: Router | None = None,
    tls: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    facts: Callable[[], AgentFacts] | None = None,
) -> tuple[grpc.Server, int | None]:
    """Build (not start) the OIP v2 server; return it and the bound TCP port, if any.

    ``tls`` serves the TCP address with TLS; ``interceptors`` run before every call (the
    fleet server's reference cloud service checks its token there).

    Raises:
        OSError: a listener could not be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="oip"),
        # Past this many calls in progress gRPC answers RESOURCE_EXHAUSTED instead of queueing
        # (uncounted: grpcio refuses before any handler runs). Each model admits only its own
        # workers + queue_depth and refuses the rest at once (counted), so the threads cycle
        # and a flood on one model leaves the others served; see docs/inference-api.md.
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # One agent per port: a second one on it fails to bind (agent.ports).
            ("grpc.so_reuseport", 0),
        ],
    )
    port: int | None = None
    group: int | None = None
    if socket_path is not None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if unix_socket_in_use(socket_path, "api.socket"):
            raise PortInUseError("api.socket", str(socket_path))
        if socket_path.is_socket():
            socket_path.unlink()  # left by a previous run that was killed
        if server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise OSError(f"cannot listen on unix socket {socket_path}")
        # Owner and group (the apps allowed to use the device's models), nobody else.
        socket_path.chmod(0o660)
        group = socket_path.stat().st_gid  # its members' shared memory may be registered
    servicer = InferenceServicer(
        engine, is_ready=is_ready, router=router, shm=SharedMemoryRegistry(group=group)
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(_Health(servicer.ready), server)
    add_status_service(server, engine, router=router, facts=facts)  # docs/agent-cli.md
    if tcp_address:
        port = (
            server.add_secure_port(tcp_address, tls)
            if tls is not None
            else server.add_insecure_port(tcp_address)
        )
        if port == 0:
            raise OSError(f"cannot listen on {tcp_address}")
    return server, port
