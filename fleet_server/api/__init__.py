"""gRPC services: DeviceService for agents, AdminService for the CLI."""

from __future__ import annotations

from fleet_server.api.server import ServerContext, create_server

__all__ = ["ServerContext", "create_server"]
