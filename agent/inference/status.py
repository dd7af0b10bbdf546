"""The agent's own local API, ``edgefleet.agent.v1.AgentLocal`` (``protos/agent_local.proto``):
what OIP v2's standard calls cannot say about the running agent, for ``edgefleet-agent status``.

``create_server`` registers it beside OIP v2; it answers on the unix socket only (the socket's
group decides who may ask, while a TCP listener is open to every user of the host). Read-only,
and nothing secret in it. What the engine does not know (telemetry, updates) the daemon hands
over as :class:`AgentFacts`; :func:`condition` decides how a model stands, the servicer only
gathers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent import __version__
from agent.inference.engine import Engine, ModelStatus
from agent.inference.modelfile import TensorInfo
from agent.inference.serving import on_socket
from agent.inference.tensors import DTYPE_TO_OIP
from agent.routing.router import Router
from protos import agent_local_pb2 as pb
from protos import agent_local_pb2_grpc as pb_grpc

__all__ = [
    "WEDGED_AFTER_S",
    "AgentFacts",
    "Release",
    "StatusServicer",
    "add_status_service",
    "condition",
]

log = logging.getLogger(__name__)
WEDGED_AFTER_S = 30.0  # a model with requests in flight that finished none this long is stuck


@dataclass(frozen=True)
class Release:
    """What the update journal says of one model's serving release."""

    release_counter: int
    previous_version: str = ""  # the last-known-good
    in_health_window: bool = False


@dataclass(frozen=True)
class AgentFacts:
    """What the daemon knows beyond the engine, as it is now."""

    enrolled: bool = False
    device_id: str = ""
    broker: str = ""  # host and port only: never credentials
    broker_connected: bool = False
    spooled: int = 0
    spool_dropped: int = 0
    telemetry_problem: str = ""
    telemetry_error: str = ""
    last_update: str = ""
    last_update_detail: str = ""
    releases: Mapping[str, Release] = field(default_factory=dict)
    refused_releases: int = 0
    journal_error: str = ""


def condition(status: ModelStatus) -> str:
    """How a registered model stands: "ready", "on demand", "unloaded" or "failed"."""
    if status.state == "READY":
        return "ready"
    if status.held:
        return "unloaded"
    return "on demand" if status.loadable else "failed"


def _tensor(t: TensorInfo) -> pb.Tensor:
    return pb.Tensor(
        name=t.name,
        datatype=DTYPE_TO_OIP.get(t.dtype, t.dtype.upper()),
        shape=list(t.shape),
        scale=t.scale,
        zero_point=t.zero_point,
    )


class StatusServicer(pb_grpc.AgentLocalServicer):
    """``Status`` over an engine, the router and the daemon's facts."""

    def __init__(
        self,
        engine: Engine,
        *,
        router: Router | None = None,
        facts: Callable[[], AgentFacts] | None = None,
    ) -> None:
        self._engine = engine
        self._router = router
        self._facts = facts or AgentFacts
        self._started = time.monotonic()

    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:  # noqa: N802
        if not on_socket(context):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the agent's status is served on its unix socket only, not over TCP",
            )
        facts = self._facts()
        response = pb.StatusResponse(
            agent_version=__version__,
            uptime_s=round(time.monotonic() - self._started, 3),
            wedged=self._engine.wedged(WEDGED_AFTER_S),
            telemetry=pb.Telemetry(
                enrolled=facts.enrolled,
                device_id=facts.device_id,
                broker=facts.broker,
                connected=facts.broker_connected,
                spooled=facts.spooled,
                dropped=facts.spool_dropped,
                problem=facts.telemetry_problem,
                last_error=facts.telemetry_error,
            ),
            updates=pb.Updates(
                last=facts.last_update,
                last_detail=facts.last_update_detail,
                refused_releases=facts.refused_releases,
                journal_error=facts.journal_error,
            ),
        )
        local = self._engine.index()
        for status in local:
            response.models.append(self._model(status, facts.releases.get(status.name)))
        router = self._router
        if router is not None:
            names = {s.name for s in local}
            for name in router.models():
                policy = router.policy(name)
                if name in names or policy.kind != "cloud":
                    continue
                response.models.add(
                    name=name,
                    condition="cloud",
                    variant=f"cloud:{policy.cloud_model or name}",
                    routing=policy.kind,
                    routing_source=policy.source,
                    cloud_requests=router.stats(name).cloud_requests,
                )
        return response

    def _model(self, status: ModelStatus, release: Release | None) -> pb.Model:
        entry = pb.Model(
            name=status.name,
            version=status.version,
            condition=condition(status),
            pinned=status.pinned,
        )
        if release is not None:
            entry.release_counter = release.release_counter
            entry.previous_version = release.previous_version
            entry.in_health_window = release.in_health_window
        if self._router is not None:
            policy = self._router.policy(status.name)
            entry.routing, entry.routing_source = policy.kind, policy.source
            entry.cloud_requests = self._router.stats(status.name).cloud_requests
        model = self._engine.peek(status.name)
        if model is None or model.version != status.version:
            return entry
        stats = model.stats.snapshot()
        p50, p95, p99 = model.stats.recent_percentiles()
        entry.variant = model.variant or model.backend  # as the inference API reports it
        entry.backend, entry.device, entry.backend_reason = (
            model.backend,
            model.device,
            model.backend_reason,
        )
        entry.workers, entry.queue_depth = model.workers, model.queue_depth
        entry.in_flight, entry.refused = max(0, stats.in_flight), stats.rejected
        entry.p50_ms, entry.p95_ms, entry.p99_ms = round(p50, 3), round(p95, 3), round(p99, 3)
        entry.inputs.extend(_tensor(t) for t in model.info.inputs)
        entry.outputs.extend(_tensor(t) for t in model.info.outputs)
        return entry


def add_status_service(
    server: grpc.Server,
    engine: Engine,
    *,
    router: Router | None = None,
    facts: Callable[[], AgentFacts] | None = None,
) -> None:
    """Serve ``Status`` on ``server`` (before it starts)."""
    pb_grpc.add_AgentLocalServicer_to_server(
        StatusServicer(engine, router=router, facts=facts), server
    )
