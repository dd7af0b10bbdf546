"""Open Inference Protocol v2 over gRPC, served from the agent's loaded models.

Standard clients (tritonclient, KServe/MLServer clients) call this on the agent's unix socket or
TCP port. Tensors travel as ``raw_input_contents``/``raw_output_contents`` (little-endian bytes)
or typed ``contents``; responses say which path served them in their parameters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent import __version__
from agent.errors import (
    AgentError,
    InferenceError,
    InputError,
    ModelNotFoundError,
    QueueFullError,
)
from agent.inference.describe import model_config, model_statistics, output_shape
from agent.inference.engine import Engine, LoadedModel
from agent.inference.modelfile import TensorInfo
from agent.inference.runtime import find_runtime
from agent.inference.shm import SharedMemoryRegistry
from agent.inference.status import AgentFacts, add_status_service
from agent.inference.tensors import (
    DTYPE_TO_OIP,
    OIP_TO_DTYPE,
    RequestError,
    classification,
    classify,
    decode_inputs,
    shm_range,
    tensor_metadata,
)
from agent.routing.policy import Policy, cascade_reason, precheck
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
]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _on_socket(context: Any) -> bool:
    """Whether a call came through the unix socket (whose group decides who may connect).

    Shared memory is served there only: a TCP port (``api.listen``, the fleet server's cloud
    service) is open to every user of the host, or to other hosts, and the registry's checks
    stand in for the socket's group."""
    return str(context.peer()).startswith("unix:")


_ENGINE_ERRORS: tuple[tuple[type[AgentError], grpc.StatusCode], ...] = (
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (InferenceError, grpc.StatusCode.INTERNAL),
)


_CALLER_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


CLIENT_ID_KEY = "edgefleet-client-id"  # request metadata: an app's name, for fair sharing
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:@/-]{1,64}")


def client_id(context: Any) -> str:
    """The app's self-chosen id from the call's metadata ("" when absent or malformed)."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_KEY and isinstance(value, str) and _CLIENT_ID.fullmatch(value):
            return value
    return ""


def _uses_shm(request: pb.ModelInferRequest) -> bool:
    """Whether an input or a requested output is in shared memory."""
    return any("shared_memory_region" in t.parameters for t in request.inputs) or any(
        "shared_memory_region" in t.parameters for t in request.outputs
    )


def _socket_only(context: Any) -> None:
    """Abort a shared-memory call that did not come through the unix socket."""
    if not _on_socket(context):
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "shared memory is served on the agent's unix socket only, not over TCP",
        )


def _top_score(tensor: TensorInfo, raw: np.ndarray) -> float:
    """The largest value of an output, in real numbers (dequantized when quantized)."""
    if raw.size == 0:
        return 0.0
    top = float(raw.max())
    return (top - tensor.zero_point) * tensor.scale if tensor.quantized else top


def _mark(response: pb.ModelInferResponse, path: str, reason: str, variant: str = "") -> None:
    """Say in the response which path served it, which variant, and why."""
    response.parameters["edgefleet.path"].string_param = path
    response.parameters["edgefleet.reason"].string_param = reason[:512]
    if variant:
        response.parameters["edgefleet.variant"].string_param = variant


def _status_for(exc: AgentError) -> grpc.StatusCode:
    for kind, code in _ENGINE_ERRORS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNAVAILABLE  # the model exists but cannot be loaded now


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """OIP v2 handlers over an :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        is_ready: Callable[[], bool] | None = None,
        shm: SharedMemoryRegistry | None = None,
        router: Router | None = None,
    ) -> None:
        self._engine = engine
        self._router = router
        self._shm = shm or SharedMemoryRegistry()
        self._is_ready = is_ready or (lambda: any(s.state == "READY" for s in engine.index()))

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.ready())

    def ready(self) -> bool:
        """Whether the API serves: at least one model is ready (or what the agent says)."""
        return self._is_ready()

    def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        shm = ["system_shared_memory"] if _on_socket(context) else []
        return pb.ServerMetadataResponse(
            name="edgefleet-agent",
            version=__version__,
            extensions=[
                "classification",
                "model_repository",
                "model_configuration",
                "statistics",
                *shm,
            ],
        )

    def _model(
        self, name: str, version: str, context: Any, *, explicit_load: bool = False
    ) -> LoadedModel:
        try:
            return self._engine.get(name, version, explicit_load=explicit_load)
        except AgentError as exc:
            context.abort(_status_for(exc), str(exc))
            raise  # unreachable: abort raises

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        # Ready: loaded, or loadable on demand (registered, and no load failure recorded).
        for status in self._engine.index():
            if status.name == request.name and request.version in ("", status.version):
                loadable = status.reason in (
                    "not loaded yet",
                    "unloaded",
                    "evicted (memory budget)",
                )
                return pb.ModelReadyResponse(ready=status.state == "READY" or loadable)
        return pb.ModelReadyResponse(ready=False)

    def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        model = self._model(request.name, request.version, context)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform="tensorflow_lite",
            inputs=[tensor_metadata(t) for t in model.info.inputs],
            outputs=[
                tensor_metadata(t, output_shape(model, i)) for i, t in enumerate(model.info.outputs)
            ],
        )

    def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        model = self._model(request.name, request.version, context)
        return model_config(model, find_runtime().name.replace("-", "_"))

    def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            models = [self._model(request.name, request.version, context)]
        else:
            models = sorted(self._engine.models(), key=lambda m: m.name)
        return pb.ModelStatisticsResponse(model_stats=[model_statistics(m) for m in models])

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        uses_shm = _uses_shm(request)
        if uses_shm:
            _socket_only(context)
        policy = self._router.policy(request.model_name) if self._router else None
        client = client_id(context)
        try:
            # Tensors in shared memory (inputs or outputs) cannot travel to the cloud: those
            # requests stay local.
            if policy is not None and policy.uses_cloud and not uses_shm:
                return self._routed(request, policy, client)
            response, _ = self._local(request, client)
        except RequestError as exc:
            context.abort(exc.code, exc.message)
        _mark(response, "local", "policy local")
        return response

    def _routed(
        self, request: pb.ModelInferRequest, policy: Policy, client: str
    ) -> pb.ModelInferResponse:
        """Serve a request under a cloud-using policy (see ``agent.routing.policy``).

        Raises:
            RequestError: neither the local model nor the cloud could answer, or bad input.
        """
        router = self._router
        assert router is not None  # noqa: S101 - only called with a router
        name = request.model_name
        router.count(name)
        model = self._engine.peek(name)
        why = precheck(
            policy,
            loaded=model is not None,
            queue_full=model is not None and model.saturated,
            recent_ms=model.stats.recent_p50() if model is not None else 0.0,
        )
        local: pb.ModelInferResponse | None = None
        local_error: RequestError | None = None
        if not why:
            try:
                local, top = self._local(request, client)
            except RequestError as exc:
                if exc.code in _CALLER_ERRORS:
                    raise  # the caller's mistake: the cloud would refuse it too
                local_error = exc
                why = f"local failed: {exc.message}"
            else:
                why = cascade_reason(policy, top)
                if not why:
                    _mark(local, "local", f"{policy.kind}: local answer kept")
                    return local
        answer, refused = router.call_cloud(name, policy, request)
        if answer is not None:
            answer.model_name = name
            answer.id = request.id
            _mark(answer, "cloud", why, f"cloud:{policy.cloud_model or name}")
            return answer
        if local is None and local_error is None and model is not None:
            # The cloud was preferred (latency budget, full queue) but cannot answer.
            try:
                local, _ = self._local(request, client)
            except RequestError as exc:
                local_error = exc
        if local is not None:
            _mark(local, "local", f"{why}; {refused}")
            local.parameters["edgefleet.cloud_skipped"].string_param = refused
            return local
        detail = f"{why}; {refused}"
        if local_error is not None and why.startswith("local failed"):
            raise RequestError(local_error.code, detail)
        raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {name}: {detail}")

    def _local(
        self, request: pb.ModelInferRequest, client: str = ""
    ) -> tuple[pb.ModelInferResponse, float]:
        """Run a request of ``client`` on the local model: the response and the top value of
        its first output in real numbers (a classifier's top score).

        Raises:
            RequestError: with the status the error maps to.
        """
        try:
            model = self._engine.get(request.model_name, request.model_version)
        except AgentError as exc:
            raise RequestError(_status_for(exc), str(exc)) from exc
        try:
            inputs, real_values = decode_inputs(request, model, self._shm)
            outputs = model.infer(inputs, client=client)
        except AgentError as exc:
            if isinstance(exc, InferenceError):
                log.warning("inference failed: %s", exc)
            raise RequestError(_status_for(exc), str(exc)) from exc
        requested = {o.name: o for o in request.outputs}
        known = {t.name for t in model.info.outputs}
        unknown = set(requested) - known
        if unknown:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {model.name} has no output(s) {sorted(unknown)} (outputs: {sorted(known)})",
            )
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        response.parameters["edgefleet.backend"].string_param = model.backend
        # The release's variant name; a release installed before agents kept it: its backend.
        response.parameters["edgefleet.variant"].string_param = model.variant or model.backend
        in_shm = []
        for tensor, raw in zip(model.info.outputs, outputs, strict=True):
            if requested and tensor.name not in requested:
                continue
            array = raw
            if real_values and tensor.quantized:
                array = ((raw.astype(np.float32) - tensor.zero_point) * tensor.scale).astype(
                    np.float32
                )
            where = shm_range(requested[tensor.name].parameters) if requested else None
            count = classification(requested[tensor.name].parameters) if requested else 0
            if count:
                if where is not None:
                    why = "a classification is not written to shared memory"
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, why)
                shape, raw_classes = classify(array, count, tensor.name)
                response.outputs.add(name=tensor.name, datatype="BYTES", shape=shape)
                response.raw_output_contents.append(raw_classes)
                continue
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            datatype = DTYPE_TO_OIP.get(array.dtype.name, array.dtype.name.upper())
            if where is None:
                response.outputs.add(name=tensor.name, datatype=datatype, shape=array.shape)
                response.raw_output_contents.append(data)
                continue
            out = pb.ModelInferResponse.InferOutputTensor(
                name=tensor.name, datatype=datatype, shape=array.shape
            )
            region, offset, size = where
            try:
                if size < len(data):
                    raise InputError(
                        f"output {tensor.name!r} needs {len(data)} bytes, region gives {size}"
                    )
                self._shm.write(region, offset, data)
            except InputError as exc:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            out.parameters["shared_memory_region"].string_param = region
            out.parameters["shared_memory_byte_size"].int64_param = len(data)
            if offset:
                out.parameters["shared_memory_offset"].int64_param = offset
            in_shm.append(out)
        # Outputs in shared memory carry no raw contents; listing them last keeps every other
        # output aligned with its raw_output_contents entry, as clients index them.
        response.outputs.extend(in_shm)
        return response, _top_score(model.info.outputs[0], outputs[0])

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
        response = pb.RepositoryIndexResponse()
        local = self._engine.index()
        for status in local:
            if request.ready and status.state != "READY":
                continue
            response.models.add(
                name=status.name, version=status.version, state=status.state, reason=status.reason
            )
        router = self._router
        if router is None:
            return response
        names = {s.name for s in local}
        for name in router.models():
            policy = router.policy(name)
            if name in names or policy.kind != "cloud":
                continue
            # Served only by the cloud (no variant fits the device, or a config's choice).
            up = router.cloud is not None and not router.breaker_open
            if request.ready and not up:
                continue
            why = f"served by the cloud{f' ({policy.reason})' if policy.reason else ''}"
            if not up:
                why += "; the cloud is not answering now"
            response.models.add(name=name, state="READY" if up else "UNAVAILABLE", reason=why)
        return response

    def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._model(request.model_name, "", context, explicit_load=True)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        if not any(s.name == request.model_name for s in self._engine.index()):
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"model {request.model_name!r} is not on this device"
            )
        self._engine.unload(request.model_name)
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
        ],
    )
    port: int | None = None
    group: int | None = None
    if socket_path is not None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
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
