"""The local inference API over HTTP: KServe v2 / Triton REST (JSON and binary tensors) on the
same :class:`agent.inference.serving.Serving` core as the gRPC API, served by uvicorn in a
thread of the agent (see docs/inference-api.md, "REST")."""

from __future__ import annotations

from agent.inference.rest.app import HEADER_LENGTH, RestLimits, build_app
from agent.inference.rest.server import RestServer, create_rest_server

__all__ = ["HEADER_LENGTH", "RestLimits", "RestServer", "build_app", "create_rest_server"]
