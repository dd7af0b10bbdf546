"""Who is calling: devices by their client certificate (mTLS), admins by a bearer token
(checked by :mod:`fleet_server.api.identity`)."""

from __future__ import annotations

import functools
from typing import Any

from fleet_server.errors import AuthError
from fleet_server.registry.ca import peer_certificate
from fleet_server.registry.store import DeviceStore

__all__ = ["bearer_token", "require_device"]

_MAX_TOKEN = 512


def bearer_token(context: Any) -> str:
    """The bearer token of a call, or ''."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()[:_MAX_TOKEN]
    return ""


@functools.lru_cache(maxsize=4096)
def _parse(pem: bytes) -> tuple[str, str]:
    return peer_certificate(pem)


def require_device(context: Any, devices: DeviceStore) -> str:
    """The calling device's id, from the client certificate TLS verified against the fleet CA.

    Raises:
        AuthError: no client certificate (the wrong port), an unknown device, a replaced
            certificate, or a revoked device.
    """
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise AuthError(
            "no device certificate: device calls go to the server's device port (mTLS) with "
            "the certificate from enrollment"
        )
    device_id, serial = _parse(bytes(pems[0]))
    found = devices.device_certificate(device_id)
    if found is None:
        raise AuthError(f"device {device_id!r} is not enrolled; re-enroll the device")
    current, revoked = found
    if revoked:
        raise AuthError(f"device {device_id} was revoked by the fleet admin")
    if current != serial:
        raise AuthError(
            f"this certificate of {device_id} was replaced by a newer one; use the newest"
        )
    return device_id
