"""The reference cloud inference service: the catalog's full-precision variants over the Open
Inference Protocol v2, with TLS and a token, so the whole routing loop runs on one machine.

Each model name serves the most precise CPU variant (float32, then float16, int16x8, dynamic
int8, full int8) of its newest release; the catalog is re-read every few seconds, so a pushed
release is served without a restart. It reuses the agent's engine and OIP servicer: the same
request handling, errors and limits as on a device. Devices learn its address and token from
their check-in answers when a routing policy sends them to the cloud.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from agent.inference.engine import Engine, EngineOptions
from agent.inference.oip import create_server
from fleet_server.artifacts.store import Artifacts
from fleet_server.catalog.store import CatalogStore, ModelRow

__all__ = ["ReferenceCloud", "TokenInterceptor"]

log = logging.getLogger(__name__)

_PRECISION = ("float32", "float16", "int16x8", "dynamic_int8", "full_int8")
_REFRESH_S = 2.0


# What a device may call: inference and metadata. Shared memory (the server's /dev/shm) and
# loading or unloading models are not for devices.
ALLOWED = frozenset(
    f"/inference.GRPCInferenceService/{name}"
    for name in (
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelInfer",
    )
)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED), and calls
    other than inference and metadata (PERMISSION_DENIED)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid cloud token is required")

        def forbid(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not offered by the cloud service")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._forbid = grpc.unary_unary_rpc_method_handler(forbid)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if not hmac.compare_digest(given, self._expected):
            return self._deny
        if handler_call_details.method not in ALLOWED:
            return self._forbid
        return continuation(handler_call_details)


def full_precision(rows: list[ModelRow]) -> dict[str, ModelRow]:
    """Model name -> the most precise CPU variant of its newest release."""
    newest: dict[str, int] = {}
    for row in rows:
        newest[row.model_name] = max(newest.get(row.model_name, 0), row.release_counter)
    chosen: dict[str, ModelRow] = {}
    for row in rows:
        if row.release_counter != newest[row.model_name] or row.quantization not in _PRECISION:
            continue
        current = chosen.get(row.model_name)
        if current is None or _PRECISION.index(row.quantization) < _PRECISION.index(
            current.quantization
        ):
            chosen[row.model_name] = row
    return chosen


class ReferenceCloud:
    """A TLS OIP v2 server over the catalog; :meth:`start` returns the bound port."""

    def __init__(
        self,
        catalog: CatalogStore,
        artifacts: Artifacts,
        *,
        token: str,
        tls_key_pem: bytes,
        tls_cert_pem: bytes,
        workers: int = 2,
    ) -> None:
        self._catalog = catalog
        self._artifacts = artifacts
        self._token = token
        self._tls = grpc.ssl_server_credentials([(tls_key_pem, tls_cert_pem)])
        self.engine = Engine(EngineOptions(workers=workers, queue_depth=64))
        self._served: dict[str, str] = {}  # name -> sha256
        self._stop = threading.Event()
        self._server: grpc.Server | None = None

    def refresh(self) -> None:
        """Serve the catalog's current full-precision variants."""
        for name, row in full_precision(self._catalog.list_models()).items():
            if self._served.get(name) == row.sha256:
                continue
            self.engine.register(name, row.version, self._artifacts.path(row.sha256), pinned=False)
            self._served[name] = row.sha256
            log.info("cloud serves %s %s (%s)", name, row.version, row.quantization)

    def start(self, address: str) -> int:
        """Listen on ``address`` (host:port, 0 = any free port).

        Raises:
            OSError: it cannot be bound.
        """
        self.refresh()
        server, port = create_server(
            self.engine,
            tcp_address=address,
            tls=self._tls,
            interceptors=[TokenInterceptor(self._token)],
            max_workers=8,
        )
        if not port:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        threading.Thread(target=self._refresher, name="cloud-catalog", daemon=True).start()
        return port

    def _refresher(self) -> None:
        while not self._stop.wait(_REFRESH_S):
            try:
                self.refresh()
            except Exception:
                log.exception("cannot refresh the cloud's models; retrying")

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace=2).wait()
