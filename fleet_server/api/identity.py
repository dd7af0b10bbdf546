"""Who calls the admin API, and whether their role allows the method: a server interceptor
that runs before every AdminService handler (so no method can forget the check), with the
role each method needs from :data:`fleet_server.admins.roles.ROLE_OF`. The handler, and the
audit log, read the caller with :func:`current`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.admins.roles import Role, required_role
from fleet_server.admins.store import AdminStore, Identity
from fleet_server.api.auth import bearer_token
from fleet_server.registry.ca import peer_certificate
from fleet_server.telemetry.throttle import OncePer

__all__ = ["ADMIN_PREFIX", "AdminAuth", "current", "require_admin", "require_role"]

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/edgefleet.v1.AdminService/"
_CURRENT: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "edgefleet_admin", default=None
)


def current() -> Identity | None:
    """The admin whose call this thread is serving (None outside one)."""
    return _CURRENT.get()


def require_admin(context: Any) -> Identity:
    """The caller, whom :class:`AdminAuth` admitted; a second line of defence in every handler
    (a server built without the interceptor refuses every admin call)."""
    identity = current()
    if identity is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin credentials were not checked")
        raise AssertionError("unreachable")  # context.abort raises
    return identity


def require_role(context: Any, role: Role, what: str) -> Identity:
    """For checks beyond the method's own (another admin's token): the caller, if its role is
    at least ``role``; otherwise the call ends PERMISSION_DENIED."""
    identity = current()
    if identity is None or identity.role < role:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{_who(identity)} may not {what}: that needs the {role} role",
        )
        raise AssertionError("unreachable")  # context.abort raises
    return identity


@functools.lru_cache(maxsize=256)
def _certificate(pem: bytes) -> tuple[str, str]:
    return peer_certificate(pem)


def _who(identity: Identity | None) -> str:
    return f"{identity.name} ({identity.role})" if identity else "an unknown caller"


class AdminAuth(grpc.ServerInterceptor):
    """Authenticates every AdminService call and checks its method's role."""

    def __init__(self, admins: AdminStore) -> None:
        self._admins = admins
        self._complaints = OncePer(60.0)

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        method = str(details.method or "")
        if handler is None or not method.startswith(ADMIN_PREFIX):
            return handler
        name = method[len(ADMIN_PREFIX) :]
        needed = required_role(name)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, name, needed),
                handler.request_deserializer, handler.response_serializer,
            )  # fmt: skip
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, name, needed),
                handler.request_deserializer, handler.response_serializer,
            )  # fmt: skip
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, name, needed),
                handler.request_deserializer, handler.response_serializer,
            )  # fmt: skip
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, name, needed),
            handler.request_deserializer, handler.response_serializer,
        )  # fmt: skip

    def _admit(self, context: Any, method: str, needed: Role) -> Identity:
        token = bearer_token(context)
        try:
            identity = self._admins.authenticate(token) if token else self._by_certificate(context)
        except SQLAlchemyError as exc:  # the database away: the caller retries
            log.warning("cannot check the admin credentials of %s: %s", method, exc)
            context.abort(
                grpc.StatusCode.UNAVAILABLE, "the fleet database is busy or unreachable; retry"
            )
            raise AssertionError("unreachable") from exc  # context.abort raises
        if identity is None:
            reason = (
                self._admins.bootstrap_disabled_reason()
                if token and self._admins.is_bootstrap(token)
                else "admin credentials missing or wrong (use --token, --token-file or "
                "--data-dir; or --client-cert on the server's device port)"
            )
            if self._complaints.first(context.peer() or "?"):
                log.warning("admin call %s refused from %s: %s", method, context.peer(), reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
            raise AssertionError("unreachable")  # context.abort raises
        if identity.role < needed:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{_who(identity)} may not call {method}: it needs the {needed} role",
            )
        return identity

    def _by_certificate(self, context: Any) -> Identity | None:
        """An admin's client certificate, on the port that asks for one (the device port):
        TLS has checked that the fleet CA signed it and that it is in date."""
        pems = (context.auth_context() or {}).get("x509_pem_cert") or []
        if not pems:
            return None
        common_name, serial = _certificate(bytes(pems[0]))
        return self._admins.authenticate_certificate(common_name, serial)

    def _unary(self, inner: Callable[..., Any], method: str, needed: Role) -> Callable[..., Any]:
        def behavior(request: Any, context: Any) -> Any:
            identity = self._admit(context, method, needed)
            token = _CURRENT.set(identity)
            try:
                return inner(request, context)
            finally:
                _CURRENT.reset(token)

        return behavior

    def _stream(self, inner: Callable[..., Any], method: str, needed: Role) -> Callable[..., Any]:
        def behavior(request: Any, context: Any) -> Iterator[Any]:
            identity = self._admit(context, method, needed)
            # The response iterator runs in the thread that serves the call, after this
            # returns: the identity is set for each step of it.
            responses = iter(inner(request, context))
            while True:
                token = _CURRENT.set(identity)
                try:
                    item = next(responses)
                except StopIteration:
                    return
                finally:
                    _CURRENT.reset(token)
                yield item

        return behavior
