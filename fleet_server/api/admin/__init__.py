"""AdminService: what the ``edgefleet`` CLI and the dashboard call, one module per area.

Every method needs a named admin's token (or the bootstrap token) with the role
fleet_server/admins/roles.py gives it, checked before it runs (fleet_server/api/identity.py);
every state-changing one is recorded in the audit log with the admin's name.
"""

from __future__ import annotations

from fleet_server.api.admin.devices import DevicesAdmin
from fleet_server.api.admin.fleet import FleetAdmin
from fleet_server.api.admin.logs import LogsAdmin
from fleet_server.api.admin.models import ModelsAdmin
from fleet_server.api.admin.people import PeopleAdmin
from fleet_server.api.admin.recovery import RecoveryAdmin
from fleet_server.api.admin.rollouts import RolloutsAdmin
from fleet_server.api.admin.routing import RoutingAdmin
from fleet_server.api.admin.webhooks import WebhooksAdmin
from fleet_server.api.admin.windows import WindowsAdmin
from fleet_server.context import ServerContext
from protos import admin_pb2_grpc as pb_grpc

__all__ = ["AdminServicer"]


class AdminServicer(
    ModelsAdmin,
    RecoveryAdmin,
    DevicesAdmin,
    LogsAdmin,
    RolloutsAdmin,
    RoutingAdmin,
    FleetAdmin,
    PeopleAdmin,
    WebhooksAdmin,
    WindowsAdmin,
    pb_grpc.AdminServiceServicer,
):
    """The whole admin API: each area's methods over one shared context."""

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
