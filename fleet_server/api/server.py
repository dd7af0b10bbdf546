"""Build the server's gRPC server: device and admin services plus the standard health service."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleet_server.api.admin import AdminServicer
from fleet_server.api.device_service import DeviceServicer, add_device_service
from fleet_server.api.identity import AdminAuth
from fleet_server.context import ServerContext
from protos import admin_pb2_grpc
from protos.keepalive import server_options

__all__ = ["create_server"]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def create_server(
    ctx: ServerContext,
    address: str,
    device_address: str,
    *,
    tls_names: list[str],
    max_workers: int = 16,
    shared: bool = False,
) -> tuple[grpc.Server, int, int]:
    """Build (not start) the server; return it and the bound main and device ports.

    Both ports speak TLS with a certificate from the fleet CA covering ``tls_names``. The main
    port (enrollment, admin, health) asks no client certificate; the device port requires one
    signed by the fleet CA.

    The ports are bound without SO_REUSEPORT (a second server on them fails) unless the main
    process starts ``workers`` or this is one (``worker``): they share the device port.

    Raises:
        OSError: an address cannot be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[AdminAuth(ctx.admins)],  # every admin call: who, and may they
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Agents ping every 20 s to notice dead connections; refusing those pings would
            # close their connections with GOAWAY "too_many_pings".
            *server_options(),
            ("grpc.so_reuseport", 1 if shared else 0),
        ],
    )
    add_device_service(DeviceServicer(ctx), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(ctx), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", "edgefleet.v1.DeviceService", "edgefleet.v1.AdminService"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
    ctx.server_cert_pem = cert_pem  # for GetKeyStatus: when it expires
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
