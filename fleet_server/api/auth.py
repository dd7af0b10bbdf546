"""Bearer-token credentials on gRPC metadata. (mTLS device identity: the fleet-server issue.)"""

from __future__ import annotations

import hmac
from typing import Any

from fleet_server.errors import AuthError
from fleet_server.storage.db import Database

__all__ = ["bearer_token", "require_admin", "require_device"]

_MAX_TOKEN = 512


def bearer_token(context: Any) -> str:
    """The bearer token of a call, or ''."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()[:_MAX_TOKEN]
    return ""


def require_admin(context: Any, admin_token: str) -> None:
    """Raise AuthError unless the call carries the admin token."""
    given = bearer_token(context)
    if not given or not hmac.compare_digest(given.encode(), admin_token.encode()):
        raise AuthError("admin credentials missing or wrong (use --token or --data-dir)")


def require_device(context: Any, db: Database) -> str:
    """The calling device's id; raise AuthError for a missing or unknown token."""
    given = bearer_token(context)
    found = db.device_for_token(given) if given else None
    if found is None:
        raise AuthError("device credentials missing or unknown; re-enroll the device")
    device_id, revoked = found
    if revoked:
        raise AuthError(f"device {device_id} was revoked by the fleet admin")
    return device_id
