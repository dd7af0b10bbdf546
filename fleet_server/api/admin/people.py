"""Named admins: who am I, and (for the admin role) adding, listing, re-roling, rotating and
revoking them. Tokens are in answers once and never in the audit log."""

from __future__ import annotations

import logging
import time
from typing import Any

from fleet_server.admins.roles import Role
from fleet_server.admins.store import CERT_CN_PREFIX, AdminRow
from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin._base import AdminBase, audited
from fleet_server.api.identity import require_admin, require_role
from fleet_server.errors import BadRequestError, NotFoundError
from protos import admin_pb2 as pb

log = logging.getLogger(__name__)


def _role(name: str) -> Role:
    try:
        return Role.parse(name)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc


CERT_DAYS = 90  # an admin's client certificate, unless asked otherwise (at most a year)


def _info(row: AdminRow) -> pb.AdminInfo:
    return pb.AdminInfo(
        name=row.name,
        role=str(row.role),
        created_unix=row.created_at,
        created_by=row.created_by,
        revoked_unix=row.revoked_at or 0,
        last_used_unix=row.last_used_at or 0,
        cert_serial=row.cert_serial or "",
        cert_not_after_unix=row.cert_not_after or 0,
    )


def _whose(context: Any, named: str, what: str, bootstrap_error: str) -> str:
    """Whose token or certificate a call is about: the caller's own (any role), or the named
    admin's (the admin role only; the bootstrap token must always name one)."""
    identity = require_admin(context)
    name = named or identity.name
    if name != identity.name or identity.bootstrap:
        require_role(context, Role.ADMIN, what)
    if identity.bootstrap and not named:
        raise BadRequestError(bootstrap_error)
    return name


class PeopleAdmin(AdminBase):
    def _row(self, name: str) -> AdminRow:
        row = next((r for r in self._ctx.admins.list() if r.name == name), None)
        if row is None:
            raise NotFoundError(f"no admin {name}")
        return row

    @rpc_errors
    def WhoAmI(self, request: pb.WhoAmIRequest, context: Any) -> pb.AdminInfo:  # noqa: N802
        identity = require_admin(context)
        if identity.bootstrap:
            return pb.AdminInfo(name=identity.name, role=str(identity.role), bootstrap=True)
        return _info(self._row(identity.name))

    @rpc_errors
    def ListAdmins(  # noqa: N802
        self, request: pb.ListAdminsRequest, context: Any
    ) -> pb.ListAdminsResponse:
        require_admin(context)
        admins = self._ctx.admins
        return pb.ListAdminsResponse(
            admins=[_info(r) for r in admins.list()],
            bootstrap_enabled=admins.bootstrap_allowed(time.time()),
            bootstrap_until_unix=admins.bootstrap_until(),
        )

    @rpc_errors
    @audited("CreateAdmin", lambda r: f"admin {r.name} as {r.role}")
    def CreateAdmin(  # noqa: N802
        self, request: pb.CreateAdminRequest, context: Any
    ) -> pb.AdminTokenResponse:
        by = require_admin(context)
        token = self._ctx.admins.create(request.name, _role(request.role), by.name)
        log.info("admin %s (%s) added by %s", request.name, request.role, by.name)
        return pb.AdminTokenResponse(admin=_info(self._row(request.name)), token=token)

    @rpc_errors
    @audited("SetAdminRole", lambda r: f"admin {r.name} to {r.role}")
    def SetAdminRole(  # noqa: N802
        self, request: pb.SetAdminRoleRequest, context: Any
    ) -> pb.AdminInfo:
        require_admin(context)
        self._ctx.admins.set_role(request.name, _role(request.role))
        return _info(self._row(request.name))

    @rpc_errors
    @audited("RotateAdminToken", lambda r: f"admin {r.name}")
    def RotateAdminToken(  # noqa: N802
        self, request: pb.AdminRequest, context: Any
    ) -> pb.AdminTokenResponse:
        name = _whose(
            context,
            request.name,
            f"rotate the token of {request.name}",
            "the bootstrap token is DATA_DIR/admin.token: replace that file on the server "
            "host and restart the server",
        )
        token = self._ctx.admins.rotate(name)
        return pb.AdminTokenResponse(admin=_info(self._row(name)), token=token)

    @rpc_errors
    @audited(
        "IssueAdminCertificate",
        lambda r: f"admin {r.name or '(self)'} for {r.days or CERT_DAYS} days",
    )
    def IssueAdminCertificate(  # noqa: N802
        self, request: pb.AdminCertificateRequest, context: Any
    ) -> pb.AdminCertificateResponse:
        identity = require_admin(context)
        name = _whose(
            context,
            request.name,
            f"issue a certificate for {request.name}",
            "the bootstrap token has no certificate: name an admin",
        )
        days = request.days or CERT_DAYS
        if not 1 <= days <= 365:
            raise BadRequestError(f"--days {days} is outside 1..365")
        row = self._row(name)
        if row.revoked_at is not None:
            raise NotFoundError(f"admin {name} is revoked")
        issued = self._ctx.ca.sign_admin_csr(request.csr_pem, CERT_CN_PREFIX + name, days)
        self._ctx.admins.set_certificate(name, issued.serial, issued.not_after)
        log.info("client certificate %s issued to admin %s by %s", issued.serial, name,
                 identity.name)  # fmt: skip
        return pb.AdminCertificateResponse(
            admin=_info(self._row(name)), cert_pem=issued.pem, ca_pem=self._ctx.ca.cert_pem
        )

    @rpc_errors
    @audited("RevokeAdmin", lambda r: f"admin {r.name}")
    def RevokeAdmin(self, request: pb.AdminRequest, context: Any) -> pb.AdminInfo:  # noqa: N802
        by = require_admin(context)
        self._ctx.admins.revoke(request.name)
        log.warning("admin %s revoked by %s", request.name, by.name)
        return _info(self._row(request.name))
