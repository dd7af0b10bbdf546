"""What ``edgefleet-agent status`` and ``infer`` ask the running agent, as plain documents
(the ``--json`` output; :mod:`agent.local.report` renders them as text).

``status`` joins the standard calls (ServerReady, RepositoryIndex, ModelStatistics) with the
agent's own ``Status`` by model name. ``infer`` encodes an image as ``predict`` does, with the
input's quantization that ``Status`` reports, or sends a ``.npy`` array as it is.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent._fs import read_regular
from agent.errors import AgentError, InputError, ModelNotFoundError, UsageError
from agent.inference.modelfile import TensorInfo
from agent.inference.preprocess import image_to_tensor, load_image, top_k
from agent.inference.tensors import DTYPE_TO_OIP, OIP_TO_DTYPE
from agent.local.client import LocalClient
from protos import agent_local_pb2
from protos import inference_pb2 as pb

__all__ = ["MAX_NPY_BYTES", "infer_once", "read_status"]

MAX_NPY_BYTES = 64 * 1024 * 1024  # the agent takes no larger message


def _statistics(stats: pb.ModelStatistics) -> dict[str, int]:
    fail = stats.inference_stats.fail.count
    return {
        "requests": stats.inference_count + fail,
        "succeeded": stats.inference_count,
        "failed": fail,
        "last_inference_unix_ms": stats.last_inference,
    }


def _model(
    listed: pb.RepositoryIndexResponse.ModelIndex | None,
    agent: agent_local_pb2.Model | None,
    stats: pb.ModelStatistics | None,
) -> dict[str, Any]:
    name = listed.name if listed is not None else agent.name if agent is not None else ""
    doc: dict[str, Any] = {
        "name": name,
        "version": listed.version if listed is not None else agent.version if agent else "",
        "state": listed.state if listed is not None else "",
        "reason": listed.reason if listed is not None else "",
    }
    if agent is not None:
        doc |= {
            "condition": agent.condition,
            "pinned": agent.pinned,
            "variant": agent.variant,
            "backend": agent.backend,
            "device": agent.device,
            "backend_reason": agent.backend_reason,
            "routing": agent.routing,
            "routing_source": agent.routing_source,
            "workers": agent.workers,
            "queue_depth": agent.queue_depth,
            "in_flight": agent.in_flight,
            "refused": agent.refused,
            "cloud_requests": agent.cloud_requests,
            "latency_ms": {"p50": agent.p50_ms, "p95": agent.p95_ms, "p99": agent.p99_ms},
            "release_counter": agent.release_counter,
            "previous_version": agent.previous_version,
            "in_health_window": agent.in_health_window,
        }
    else:  # appeared between the calls: what the index says
        doc["condition"] = "ready" if doc["state"] == "READY" else "unknown"
    doc |= (
        _statistics(stats)
        if stats is not None
        else {"requests": 0, "succeeded": 0, "failed": 0, "last_inference_unix_ms": 0}
    )
    return doc


def _problems(ready: bool, models: list[dict[str, Any]], wedged: str) -> list[str]:
    """What makes the agent not ready or a model failing (exit 1)."""
    problems = [] if ready else ["not ready: no model is served"]
    for m in models:
        if m["condition"] == "failed":
            problems.append(f"model {m['name']} {m['version']} failed: {m['reason']}")
        elif m["condition"] == "cloud" and m["state"] != "READY":
            problems.append(f"model {m['name']} (cloud): {m['reason']}")
    if wedged:
        problems.append(f"wedged: {wedged}")
    return problems


def read_status(client: LocalClient) -> dict[str, Any]:
    """The running agent's status as one document (see docs/agent-cli.md for its keys)."""
    ready = client.server_ready()
    index = client.index()
    statistics = {s.name: s for s in client.statistics().model_stats}
    status = client.status()
    agent = {m.name: m for m in status.models}
    listed = {m.name: m for m in index.models}
    names = [m.name for m in index.models] + sorted(set(agent) - set(listed))
    models = [_model(listed.get(n), agent.get(n), statistics.get(n)) for n in names]
    t, u = status.telemetry, status.updates
    return {
        "socket": str(client.path),
        "agent_version": status.agent_version,
        "ready": ready,
        "uptime_s": status.uptime_s,
        "wedged": status.wedged,
        "models": models,
        "telemetry": {
            "enrolled": t.enrolled,
            "device_id": t.device_id,
            "broker": t.broker,
            "connected": t.connected,
            "spooled": t.spooled,
            "dropped": t.dropped,
            "problem": t.problem,
            "last_error": t.last_error,
        },
        "updates": {
            "last": u.last,
            "last_detail": u.last_detail,
            "refused_releases": u.refused_releases,
            "journal_error": u.journal_error,
        },
        "problems": _problems(ready, models, status.wedged),
    }


def _tensor_info(tensor: agent_local_pb2.Tensor) -> TensorInfo:
    return TensorInfo(
        name=tensor.name,
        dtype=OIP_TO_DTYPE.get(tensor.datatype, tensor.datatype.lower()),
        shape=tuple(int(d) for d in tensor.shape),
        scale=tensor.scale,
        zero_point=tensor.zero_point,
    )


def _read_npy(path: Path) -> np.ndarray:
    try:
        data = read_regular(path, MAX_NPY_BYTES)
    except FileNotFoundError:
        raise UsageError(f"input {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"{path} is not a readable .npy array: {exc.strerror or exc}") from None
    try:
        # A pickle (allow_pickle=False) and an object dtype are refused here.
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path} is not a readable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype.name not in DTYPE_TO_OIP:
        raise UsageError(f"{path} holds no array of a numeric type the agent takes")
    return array


def _described(client: LocalClient, model: str) -> agent_local_pb2.Model | None:
    """How the agent describes a loaded model's tensors (with their quantization)."""
    for entry in client.status().models:
        if entry.name == model and entry.inputs:
            return entry
    return None


def infer_once(
    client: LocalClient,
    model: str,
    source: Path,
    *,
    k: int = 3,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Run ``source`` (an image, or a ``.npy`` array) through ``model`` on the agent.

    Raises:
        ModelNotFoundError: the agent has no such model (the message lists those it has).
        InputError: the input does not fit the model (the agent's own message).
        UsageError: the input file is missing or unreadable.
        SocketError: the agent stopped answering.
    """
    try:
        metadata = client.metadata(model)  # also loads a model that loads on demand
    except ModelNotFoundError:
        names = [m.name for m in client.index().models]
        if model in names:
            raise AgentError(f"model {model} is served by the cloud only here: the agent has "
                             "no local model to describe its input") from None  # fmt: skip
        raise ModelNotFoundError(
            f"model {model!r} is not on this agent (models: {', '.join(names) or 'none'})"
        ) from None
    if len(metadata.inputs) != 1:
        raise InputError(f"model {model} takes {len(metadata.inputs)} inputs; infer sends one")
    described = _described(client, model)
    if source.suffix.lower() == ".npy":
        array = _read_npy(source)
    else:
        if not source.is_file():
            raise UsageError(f"input {source} does not exist (an image file or a .npy array)")
        if described is None:
            raise AgentError(f"the agent does not describe model {model}'s input; retry")
        tensor = _tensor_info(described.inputs[0])
        try:
            image = load_image(source)
        except InputError as exc:
            raise UsageError(str(exc)) from None
        array = image_to_tensor(image, tensor)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(
        name=metadata.inputs[0].name,
        datatype=DTYPE_TO_OIP[array.dtype.name],
        shape=list(array.shape),
    )
    little = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
    request.raw_input_contents.append(little.tobytes())
    start = time.perf_counter()
    response = client.infer(request)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    params = {
        key.removeprefix("edgefleet."): value.string_param
        for key, value in response.parameters.items()
        if key.startswith("edgefleet.")
    }
    doc: dict[str, Any] = {
        "model": response.model_name,
        "version": response.model_version,
        "input": str(source),
        "round_trip_ms": round(elapsed_ms, 3),
        "parameters": params,
        "outputs": [
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
            for o in response.outputs
        ],
    }
    scores = _scores(response, described.outputs if described is not None else ())
    if scores is not None:
        array, tensor = scores
        doc["top_k"] = [
            {"label": r.label, "index": r.index, "score": round(r.score, 6)}
            for r in top_k(array, tensor, k, labels)
        ]
    return doc


def _scores(
    response: pb.ModelInferResponse, described: Sequence[agent_local_pb2.Tensor]
) -> tuple[np.ndarray, TensorInfo] | None:
    """A classifier's one output (one row of scores) and how to read it, or None."""
    if len(response.outputs) != 1 or len(response.raw_output_contents) != 1:
        return None
    out = response.outputs[0]
    dtype = OIP_TO_DTYPE.get(out.datatype)
    shape = tuple(int(d) for d in out.shape)
    if dtype is None or not shape or math.prod(shape) != shape[-1] or shape[-1] < 2:
        return None
    raw = response.raw_output_contents[0]
    if len(raw) != shape[-1] * np.dtype(dtype).itemsize:
        return None  # bytes that do not fit the shape name no classes
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    tensor = TensorInfo(out.name, dtype, shape, 0.0, 0)
    # A local answer in the model's own numbers: dequantize with the output's scale. A cloud
    # answer (another variant) or real values come in their own type.
    for t in described:
        if t.name == out.name and t.datatype == out.datatype and t.scale:
            tensor = _tensor_info(t)
    return array, tensor
