"""The three roles and what each admin RPC needs. One table, checked by the admin API's
interceptor before any handler runs (:mod:`fleet_server.api.identity`), shown in
docs/security.md, and complete by construction: a test compares it with the service's methods,
and a method missing from it needs ``admin``.

- **viewer** reads: the fleet, devices, models, rollouts, maintenance windows, costs, the audit
  log, key status.
- **operator** runs the fleet day to day: pushes and deploys models, creates, schedules and
  steers rollouts, sets maintenance windows, labels and commands devices, reads their logs,
  enrolls devices (tokens), attaches signatures.
- **admin** also changes what protects the fleet or costs money: revokes devices, rolls a model
  back or recovers from a stolen key (both need the root keys anyway), routing policies,
  budgets and prices, webhooks, and the admins themselves.
"""

from __future__ import annotations

import enum

__all__ = ["ROLE_OF", "Role", "required_role"]


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        """``viewer``, ``operator`` or ``admin``.

        Raises:
            ValueError: another name.
        """
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"no role {name!r}: viewer, operator or admin") from None

    def __str__(self) -> str:
        return self.name.lower()


_V, _O, _A = Role.VIEWER, Role.OPERATOR, Role.ADMIN

ROLE_OF: dict[str, Role] = {
    # models and releases
    "ListModels": _V,
    "ExplainVariant": _V,
    "GetBenchReport": _V,
    "PushModel": _O,
    "Deploy": _O,
    "DeleteModelVersion": _O,
    "PruneModels": _O,
    "RequestBenchmark": _O,
    "ListPendingManifests": _O,
    "AttachSignatures": _O,
    "PrepareRollback": _A,
    "CommitRollback": _A,
    "PrepareRecovery": _A,
    "CommitRecovery": _A,
    # devices and enrollment
    "ListDevices": _V,
    "GetDevice": _V,
    "LabelDevice": _O,
    "SendCommand": _O,
    "ClearRefusal": _O,
    # a device's log can name hosts, paths and what runs: reading it is an operator's, as is
    # asking for it
    "RequestDeviceLog": _O,
    "GetDeviceLog": _O,
    "CreateEnrollmentToken": _O,
    "ListEnrollmentTokens": _O,
    "RevokeEnrollmentToken": _O,
    "RevokeDevice": _A,
    # rollouts
    "ListRollouts": _V,
    "GetRollout": _V,
    "CreateRollout": _O,
    "PauseRollout": _O,
    "ResumeRollout": _O,
    "AbortRollout": _O,
    "PrepareRolloutRollback": _O,
    "CommitRolloutRollback": _O,
    "ListMaintenanceWindows": _V,
    "AddMaintenanceWindow": _O,
    "RemoveMaintenanceWindow": _O,
    # routing and costs
    "ListRoutingPolicies": _V,
    "GetPrices": _V,
    "GetCosts": _V,
    "SetRoutingPolicy": _A,
    "DeleteRoutingPolicy": _A,
    "SetPrices": _A,
    # the fleet's own
    "ListAudit": _V,
    "GetKeyStatus": _V,
    "WhoAmI": _V,
    "ListWebhooks": _V,
    "ListWebhookDeliveries": _V,
    # webhooks make the server dial out (and a test's answer tells whether a port answers)
    "AddWebhook": _A,
    "RemoveWebhook": _A,
    "TestWebhook": _A,
    "ListAdmins": _A,
    "CreateAdmin": _A,
    "SetAdminRole": _A,
    "RotateAdminToken": _V,  # its own token; another admin's needs admin (checked by the handler)
    "RevokeAdmin": _A,
    "IssueAdminCertificate": _V,  # like RotateAdminToken: another admin's needs admin
}


def required_role(method: str) -> Role:
    """What a method (``ListModels``) needs: admin for one the table does not name."""
    return ROLE_OF.get(method, Role.ADMIN)
