"""Build the server's gRPC server: device and admin services plus the standard health service."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleet_server.api.admin_service import AdminServicer
from fleet_server.api.checkin import AnswerCache, LastSeen
from fleet_server.api.device_service import DeviceServicer, add_device_service
from fleet_server.artifacts.store import ArtifactStore
from fleet_server.identity.ca import FleetCA
from fleet_server.signing.keys import KeyStore
from fleet_server.storage.bench import BenchStore
from fleet_server.storage.db import Database
from fleet_server.storage.rollouts import RolloutStore
from fleet_server.storage.routing import RoutingStore
from protos import admin_pb2_grpc, device_pb2

__all__ = ["ServerContext", "create_server"]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class ServerContext:
    """Everything the servicers share."""

    db: Database
    artifacts: ArtifactStore
    keys: KeyStore
    fleet_id: str
    admin_token: str
    enrollment_token: str
    device_mqtt_url: str
    ca: FleetCA
    device_address: str = ""  # host:port of the mTLS device port, as devices should dial it
    checkin_interval_s: int = 30
    rollouts: RolloutStore = field(init=False)
    routing: RoutingStore = field(init=False)
    bench: BenchStore = field(init=False)
    # Called when something may let a rollout move on (set by the rollout controller).
    wake_rollouts: Callable[[], None] = lambda: None
    # Publishes a command (device id, kind[, model name]) to a device over MQTT and returns
    # its id (set when MQTT is there).
    send_command: Callable[..., str] | None = None
    # Where devices send cloud-routed requests (the reference service or another OIP server).
    cloud_endpoint: device_pb2.CloudEndpoint | None = None

    last_seen: LastSeen = field(init=False)
    answers: AnswerCache = field(init=False)

    def __post_init__(self) -> None:
        self.rollouts = RolloutStore(self.db)
        self.routing = RoutingStore(self.db)
        self.bench = BenchStore(self.db)
        self.last_seen = LastSeen(self.db)
        self.answers = AnswerCache()


def create_server(
    ctx: ServerContext,
    address: str,
    device_address: str,
    *,
    tls_names: list[str],
    max_workers: int = 16,
) -> tuple[grpc.Server, int, int]:
    """Build (not start) the server; return it and the bound main and device ports.

    Both ports speak TLS with a certificate from the fleet CA covering ``tls_names``. The main
    port (enrollment, admin, health) asks no client certificate; the device port requires one
    signed by the fleet CA.

    Raises:
        OSError: an address cannot be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    add_device_service(DeviceServicer(ctx), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(ctx), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", "edgefleet.v1.DeviceService", "edgefleet.v1.AdminService"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
    main = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    mutual = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ctx.ca.cert_pem, require_client_auth=True
    )
    port = 0
    if address:  # worker processes serve the device port only
        port = server.add_secure_port(address, main)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
    device_port = server.add_secure_port(device_address, mutual)
    if device_port == 0:
        raise OSError(f"cannot listen on {device_address}")
    return server, port, device_port
