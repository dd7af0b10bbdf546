"""The Open Inference Protocol v2 operations over the engine and the router, whatever carries
them: the gRPC servicer (``agent.inference.oip``) and the REST app (``agent.inference.rest``)
both call one :class:`Serving`, so decoding, routing, admission and statistics are one code path.

Requests and answers are the protocol's messages (``protos.inference_pb2``); a request that
cannot be served raises :class:`RequestError` with the OIP status it maps to (the gRPC status
code; REST turns it into an HTTP status).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

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
from agent.inference.tensors import (
    DTYPE_TO_OIP,
    RequestError,
    classification,
    classify,
    decode_inputs,
    shm_range,
    tensor_metadata,
)
from agent.inference.validation import InvalidInputError
from agent.routing.policy import Policy, cascade_reason, precheck
from agent.routing.router import Router
from protos import inference_pb2 as pb

__all__ = ["SERVER_NAME", "RequestError", "Serving", "status_for", "uses_shm"]

log = logging.getLogger(__name__)

SERVER_NAME = "edgefleet-agent"

_ENGINE_ERRORS: tuple[tuple[type[AgentError], grpc.StatusCode], ...] = (
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (InferenceError, grpc.StatusCode.INTERNAL),
)

_CALLER_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

# A model the index lists without a load failure: loadable on demand.
_LOADABLE = ("not loaded yet", "unloaded", "evicted (memory budget)")


def status_for(exc: AgentError) -> grpc.StatusCode:
    """The OIP status an engine error maps to."""
    for kind, code in _ENGINE_ERRORS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNAVAILABLE  # the model exists but cannot be loaded now


def on_socket(context: Any) -> bool:
    """Whether a gRPC call came through the unix socket (whose group decides who may connect).

    Shared memory and the agent's status are served there only: a TCP port (``api.listen``,
    the fleet server's cloud service) is open to every user of the host, or to other hosts,
    and the registry's checks stand in for the socket's group."""
    return str(context.peer()).startswith("unix:")


def uses_shm(request: pb.ModelInferRequest) -> bool:
    """Whether an input or a requested output is in shared memory."""
    return any("shared_memory_region" in t.parameters for t in request.inputs) or any(
        "shared_memory_region" in t.parameters for t in request.outputs
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


class Serving:
    """OIP v2 over an :class:`Engine` (and a :class:`Router` for cloud-using policies).

    Holds no state of its own but the shared-memory registry: a transport that serves no shared
    memory (REST) gives none and refuses such requests before they get here."""

    def __init__(
        self,
        engine: Engine,
        *,
        is_ready: Callable[[], bool] | None = None,
        shm: SharedMemoryRegistry | None = None,
        router: Router | None = None,
    ) -> None:
        self.engine = engine
        self.router = router
        self.shm = shm or SharedMemoryRegistry()
        self._is_ready = is_ready or (lambda: any(s.state == "READY" for s in engine.index()))

    def ready(self) -> bool:
        """Whether the API serves: at least one model is ready (or what the agent says)."""
        return self._is_ready()

    def server_metadata(self, *, shared_memory: bool) -> pb.ServerMetadataResponse:
        """Name, version and extensions (``system_shared_memory`` where the transport has it)."""
        extensions = ["classification", "model_repository", "model_configuration", "statistics"]
        if shared_memory:
            extensions.append("system_shared_memory")
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=extensions
        )

    def model(self, name: str, version: str = "", *, explicit_load: bool = False) -> LoadedModel:
        """The loaded model (loaded now if need be).

        Raises:
            RequestError: unknown model or version (NOT_FOUND), cannot be loaded (UNAVAILABLE).
        """
        try:
            return self.engine.get(name, version, explicit_load=explicit_load)
        except AgentError as exc:
            raise RequestError(status_for(exc), str(exc)) from exc

    def model_ready(self, name: str, version: str = "") -> bool | None:
        """Whether the model (and version) serves: loaded, or loadable on demand (registered
        and no load failure recorded); None when the device does not know it."""
        for status in self.engine.index():
            if status.name == name and version in ("", status.version):
                return status.state == "READY" or status.reason in _LOADABLE
        return None

    def knows(self, name: str) -> bool:
        """Whether the device serves ``name``: a model it has, or one the cloud serves."""
        if any(s.name == name for s in self.engine.index()):
            return True
        return self.router is not None and self.router.policy(name).uses_cloud

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        """Raises: RequestError (see :meth:`model`)."""
        model = self.model(name, version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform="tensorflow_lite",
            inputs=[tensor_metadata(t) for t in model.info.inputs],
            outputs=[
                tensor_metadata(t, output_shape(model, i)) for i, t in enumerate(model.info.outputs)
            ],
        )

    def model_config(self, name: str, version: str = "") -> pb.ModelConfigResponse:
        """Raises: RequestError (see :meth:`model`)."""
        return model_config(self.model(name, version), find_runtime().name.replace("-", "_"))

    def statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        """Of the named model, or of every loaded one.

        Raises:
            RequestError: see :meth:`model`.
        """
        if name:
            models = [self.model(name, version)]
        else:
            models = sorted(self.engine.models(), key=lambda m: m.name)
        return pb.ModelStatisticsResponse(model_stats=[model_statistics(m) for m in models])

    def repository_index(self, *, ready_only: bool = False) -> pb.RepositoryIndexResponse:
        """Every model the device knows, and those only the cloud serves."""
        response = pb.RepositoryIndexResponse()
        local = self.engine.index()
        for status in local:
            if ready_only and status.state != "READY":
                continue
            response.models.add(
                name=status.name, version=status.version, state=status.state, reason=status.reason
            )
        router = self.router
        if router is None:
            return response
        names = {s.name for s in local}
        for name in router.models():
            policy = router.policy(name)
            if name in names or policy.kind != "cloud":
                continue
            # Served only by the cloud (no variant fits the device, or a config's choice).
            up = router.cloud is not None and not router.breaker_open
            if ready_only and not up:
                continue
            why = f"served by the cloud{f' ({policy.reason})' if policy.reason else ''}"
            if not up:
                why += "; the cloud is not answering now"
            response.models.add(name=name, state="READY" if up else "UNAVAILABLE", reason=why)
        return response

    def load(self, name: str) -> None:
        """Load (and warm up) a model; a load on request undoes an unload on request.

        Raises:
            RequestError: see :meth:`model`.
        """
        self.model(name, explicit_load=True)

    def unload(self, name: str) -> None:
        """Unload a model until the next load on request.

        Raises:
            RequestError: NOT_FOUND when the device does not know the model.
        """
        if not any(s.name == name for s in self.engine.index()):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not on this device")
        self.engine.unload(name)

    def infer(self, request: pb.ModelInferRequest, client: str = "") -> pb.ModelInferResponse:
        """Serve one request of ``client`` (an app's self-chosen id, for fair sharing) by its
        model's routing policy; the response says which path served it.

        Raises:
            RequestError: bad input, unknown model, refused (RESOURCE_EXHAUSTED), or neither the
                local model nor the cloud could answer.
        """
        in_shm = uses_shm(request)
        policy = self.router.policy(request.model_name) if self.router else None
        # Tensors in shared memory (inputs or outputs) cannot travel to the cloud: those
        # requests stay local.
        if policy is not None and policy.uses_cloud and not in_shm:
            return self._routed(request, policy, client)
        response, _ = self._local(request, client)
        _mark(response, "local", "policy local")
        return response

    def _routed(
        self, request: pb.ModelInferRequest, policy: Policy, client: str
    ) -> pb.ModelInferResponse:
        """Serve a request under a cloud-using policy (see ``agent.routing.policy``).

        Raises:
            RequestError: neither the local model nor the cloud could answer, or bad input.
        """
        router = self.router
        assert router is not None  # noqa: S101 - only called with a router
        name = request.model_name
        router.count(name)
        model = self.engine.peek(name)
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
        model = self.model(request.model_name, request.model_version)
        try:
            rule = self.engine.input_rule(model.name)
            inputs, real_values = decode_inputs(request, model, self.shm, rule)
            outputs = model.infer(inputs, client=client)
        except AgentError as exc:
            if isinstance(exc, InferenceError):
                log.warning("inference failed: %s", exc)
            elif isinstance(exc, InvalidInputError):
                model.stats.refused_input()
            raise RequestError(status_for(exc), str(exc)) from exc
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
                self.shm.write(region, offset, data)
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
