"""gRPC services: DeviceService for agents, AdminService for the CLI and the dashboard."""

from __future__ import annotations
