"""The KServe v2 / Triton REST API as a Starlette app over :class:`Serving` (the same core as
the gRPC servicer): health, metadata, configuration, statistics, inference (JSON and binary
tensors, classification), the repository index, load and unload.

Bounded: a body is refused with 413 by its declared length before any of it is read (and while
it streams, past the cap), all the bodies held at once share one budget, taken as their bytes
arrive (503 past it; one app per listener, so one budget per listener), a body
must arrive within ``body_timeout_s`` (408), JSON is decoded by a few threads at a time, and
the blocking calls into the engine run on a fixed number of threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.inference.oip import CLIENT_ID_KEY, valid_client_id
from agent.inference.rest.codec import (
    SHM_OVER_REST,
    BodyError,
    encode_infer,
    parse_infer,
    to_json,
)
from agent.inference.serving import RequestError, Serving

__all__ = ["HEADER_LENGTH", "RestLimits", "build_app"]

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
_T = TypeVar("_T")

# OIP status -> HTTP status. A refusal by admission (the model's places, the app's share) is
# 503 like a model that cannot serve now: the client may retry later.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


@dataclass(frozen=True)
class RestLimits:
    """What one client, or all of them together, may make the agent hold."""

    max_body_bytes: int = 64 * 1024 * 1024  # one request's body (as gRPC's message limit)
    max_json_bytes: int = 16 * 1024 * 1024  # its JSON part: decoded JSON takes several times it
    max_bodies_bytes: int = 128 * 1024 * 1024  # every body held at once, all clients together
    body_timeout_s: float = 30.0  # a body must arrive within this
    threads: int = 64  # requests running in the engine at once (more wait for a thread)
    model_threads: int = 16  # of them, one model's (more wait, holding no thread)
    json_decoders: int = 2  # JSON bodies decoded at once
    max_connections: int = 64  # per listener; more are answered 503 and closed
    head_timeout_s: float = 10.0  # a connection must send a request's head within this


class _HttpError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _ModelSlots:
    """The threads one model's requests may hold at once. A model's places (workers and queue)
    may outnumber the API's threads; then a flood on it would hold every thread waiting in its
    queue, and a call to another model would wait behind the flood for a thread. Beyond its
    share a model's requests wait here, in the event loop, holding no thread.

    Apps share a model's threads by client id (``edgefleet-client-id``, as the engine shares
    its places): when one is free, the waiting request of the client holding the fewest goes
    next, so a second app does not wait behind a flooding app's whole backlog before the engine
    even sees it."""

    def __init__(self, per_model: int) -> None:
        self._per_model = per_model
        self._models: dict[str, _Slots] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str, client: str = "") -> AsyncIterator[None]:
        # One event loop per app: no lock. An entry lives while a request uses or awaits it,
        # so names a client makes up do not accumulate.
        slots = self._models.setdefault(name, _Slots(self._per_model))
        slots.users += 1
        try:
            await slots.take(client)
            try:
                yield
            finally:
                slots.give(client)
        finally:
            slots.users -= 1
            if not slots.users:
                del self._models[name]


class _Slots:
    """One model's threads: who holds how many, and who waits, by client (one event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.users = 0
        self._busy = 0
        self._held: dict[str, int] = {}
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    async def take(self, client: str) -> None:
        if self._busy < self.limit and not self._waiting:
            self._grant(client)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, collections.deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(client)  # granted as it was cancelled: pass it on
            else:
                queue = self._waiting.get(client)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[client]
            raise

    def give(self, client: str) -> None:
        self._busy -= 1
        held = self._held.pop(client, 1) - 1
        if held:
            self._held[client] = held
        while self._busy < self.limit and self._waiting:
            # The client holding the fewest; among equals, the one waiting longest.
            nxt = min(self._waiting, key=lambda c: self._held.get(c, 0))
            queue = self._waiting.pop(nxt)
            waiter = queue.popleft()
            if queue:
                self._waiting[nxt] = queue  # to the back: its turn again after the others
            self._grant(nxt)
            waiter.set_result(None)

    def _grant(self, client: str) -> None:
        self._busy += 1
        self._held[client] = self._held.get(client, 0) + 1


class _Budget:
    """Bytes of request bodies held at once, for all connections together."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self._held + size > self._total:
                return False
            self._held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._held -= size


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Api:
    def __init__(self, serving: Serving, limits: RestLimits) -> None:
        self.serving = serving
        self.limits = limits
        self.budget = _Budget(limits.max_bodies_bytes)
        self.limiter = anyio.CapacityLimiter(limits.threads)
        self.model_slots = _ModelSlots(limits.model_threads)
        self.json_gate = threading.BoundedSemaphore(limits.json_decoders)

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking call into the engine on one of the API's threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    @contextlib.asynccontextmanager
    async def body(self, request: Request, limit: int) -> AsyncIterator[bytes]:
        """The request's body, held within the budget until the block ends.

        The budget is taken as the bytes arrive, not by the announced length: a client that
        announces a large body and sends none of it holds nothing but its connection.

        Raises:
            _HttpError: 413 over ``limit`` (by its declared length, before reading any of it),
                503 when the budget is spent, 408 when it does not arrive in time, 415 when
                it is compressed, 400 for a malformed length.
        """
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise _HttpError(
                415,
                f"Content-Encoding {encoding!r} is not supported; send the body uncompressed",
                close=True,
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            length = _byte_count(declared, "Content-Length")
            if length > limit:
                raise _HttpError(
                    413, f"the body has {length} bytes; at most {limit} are accepted", close=True
                )
        held = [0]  # budget taken, given back when the block ends whatever happens
        try:
            yield await self._read(request, limit, held)
        finally:
            self.budget.give(held[0])

    async def _read(self, request: Request, limit: int, held: list[int]) -> bytes:
        """The body's bytes, taking their budget as they come (into ``held``).

        Raises:
            _HttpError: see :meth:`body`.
        """
        chunks = bytearray()
        try:
            with anyio.fail_after(self.limits.body_timeout_s):
                async for chunk in request.stream():
                    if len(chunks) + len(chunk) > limit:
                        raise _HttpError(
                            413,
                            f"the body has more than {limit} bytes; at most {limit} are accepted",
                            close=True,
                        )
                    if not self.budget.take(len(chunk)):
                        raise _HttpError(
                            503,
                            "the agent holds as many request bodies as it may; retry later",
                            close=True,
                        )
                    held[0] += len(chunk)
                    chunks += chunk
        except TimeoutError:
            raise _HttpError(
                408, f"the body did not arrive within {self.limits.body_timeout_s:g} s", close=True
            ) from None
        except ClientDisconnect:
            raise _HttpError(400, "the client went away", close=True) from None
        return bytes(chunks)

    async def small_json(self, request: Request) -> dict[str, Any]:
        """A small JSON object body (load, unload, index); {} when empty."""
        async with self.body(request, 64 * 1024) as raw:
            if not raw.strip():
                return {}
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                raise _HttpError(400, f"the request is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise _HttpError(400, "the request must be a JSON object")
        return doc

    # --- endpoints

    async def live(self, _request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, _request: Request) -> Response:
        if await self.call(self.serving.ready):
            return JSONResponse({"ready": True})
        return _error(503, "no model is ready")

    async def server_metadata(self, _request: Request) -> Response:
        return JSONResponse(to_json(self.serving.server_metadata(shared_memory=False)))

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model_path(request)
        return JSONResponse(to_json(await self.call(self.serving.model_metadata, name, version)))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_path(request)
        ready = await self.call(self.serving.model_ready, name, version)
        if ready is None:
            which = f" version {version!r}" if version else ""
            return _error(404, f"model {name!r}{which} is not on this device")
        if not ready:
            return _error(503, f"model {name!r} is not ready (see POST /v2/repository/index)")
        return JSONResponse({"name": name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        name, version = _model_path(request)
        config = to_json((await self.call(self.serving.model_config, name, version)).config)
        config.setdefault("max_batch_size", 0)
        return JSONResponse(config)

    async def statistics(self, request: Request) -> Response:
        name, version = _model_path(request)
        stats = await self.call(self.serving.statistics, name, version)
        return JSONResponse({"model_stats": to_json(stats).get("model_stats", [])})

    async def infer(self, request: Request) -> Response:
        name, version = _model_path(request)
        limits = self.limits
        header = request.headers.get(HEADER_LENGTH)
        header_length: int | None = None
        if header is not None:
            header_length = _byte_count(header, "Inference-Header-Content-Length")
            if header_length > limits.max_json_bytes:
                raise _HttpError(
                    413,
                    f"the JSON part has {header_length} bytes; at most "
                    f"{limits.max_json_bytes} are accepted",
                    close=True,
                )
        limit = limits.max_body_bytes if header_length is not None else limits.max_json_bytes
        client = valid_client_id(request.headers.get(CLIENT_ID_KEY))

        def run(body: bytes) -> tuple[bytes, int | None]:
            with self.json_gate:
                try:
                    message, plan = parse_infer(body, header_length, name, version)
                except BodyError:
                    if not self.serving.knows(name):  # the first thing to tell the caller
                        raise RequestError(
                            grpc.StatusCode.NOT_FOUND, f"model {name!r} is not on this device"
                        ) from None
                    raise
            del body
            return encode_infer(self.serving.infer(message, client), plan)

        async with self.body(request, limit) as body, self.model_slots.hold(name, client):
            content, json_length = await self.call(run, body)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length)},
        )

    async def repository_index(self, request: Request) -> Response:
        doc = await self.small_json(request)
        ready_only = doc.get("ready", False)
        if not isinstance(ready_only, bool):
            raise _HttpError(400, "'ready' must be a bool")
        index = await self.call(lambda: self.serving.repository_index(ready_only=ready_only))
        return JSONResponse(to_json(index).get("models", []))

    async def load(self, request: Request) -> Response:
        name = request.path_params["name"]
        params = (await self.small_json(request)).get("parameters") or {}
        if params:
            raise _HttpError(
                400,
                f"load parameters {sorted(params)[:8]} are not supported: a "
                "model's files and configuration come from the fleet server",
            )
        await self.call(self.serving.load, name)
        return JSONResponse({})

    async def unload(self, request: Request) -> Response:
        name = request.path_params["name"]
        params = (await self.small_json(request)).get("parameters") or {}
        other = sorted(set(params) - {"unload_dependents"}) if isinstance(params, dict) else []
        if other or not isinstance(params, dict):
            raise _HttpError(400, f"unload parameters {other[:8]} are not supported")
        await self.call(self.serving.unload, name)
        return JSONResponse({})

    async def shared_memory(self, _request: Request) -> Response:
        return _error(400, SHM_OVER_REST)


def _byte_count(value: str, header: str) -> int:
    """A length header's value (ASCII digits: str.isdigit() also takes "²", which int() refuses).

    Raises:
        _HttpError: 400 when it is not one.
    """
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise _HttpError(400, f"{header} {value[:40]!r} is not a byte count", close=True)
    return int(value)


def _model_path(request: Request) -> tuple[str, str]:
    return request.path_params.get("name", ""), request.path_params.get("version", "")


async def _http_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, _HttpError):
        return _error(exc.status, exc.message, close=exc.close)
    if isinstance(exc, RequestError):
        return _error(_HTTP_STATUS.get(exc.code, 500), exc.message)
    if isinstance(exc, BodyError):
        return _error(400, str(exc))
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return _error(404, "no such endpoint: see the endpoints in docs/inference-api.md")
        return _error(exc.status_code, str(exc.detail), close=exc.status_code >= 500)
    log.error("REST request failed: %r", exc, exc_info=exc)
    return _error(500, "internal error; the agent's log has the details")


def build_app(serving: Serving, limits: RestLimits | None = None) -> Starlette:
    """The REST app over ``serving`` (a :class:`Serving` with no shared memory)."""
    api = _Api(serving, limits or RestLimits())
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", api.live),
        Route("/v2/health/ready", api.ready),
        Route("/v2", api.server_metadata),
        Route("/v2/models/stats", api.statistics),
        Route("/v2/repository/index", api.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", api.load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", api.unload, methods=["POST"]),
        Route("/v2/systemsharedmemory{rest:path}", api.shared_memory, methods=["GET", "POST"]),
        Route("/v2/cudasharedmemory{rest:path}", api.shared_memory, methods=["GET", "POST"]),
    ]
    for base in (model, versioned):
        routes += [
            Route(base, api.model_metadata),
            Route(f"{base}/ready", api.model_ready),
            Route(f"{base}/config", api.model_config),
            Route(f"{base}/stats", api.statistics),
            Route(f"{base}/infer", api.infer, methods=["POST"]),
        ]
    handlers: dict[Any, Any] = {
        _HttpError: _http_error,
        RequestError: _http_error,
        BodyError: _http_error,
        HTTPException: _http_error,
        Exception: _http_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)
