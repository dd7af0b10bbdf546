"""Map our errors to gRPC status codes with a human message; never leak a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, PendingRollbackError

from fleet_server.errors import (
    AlreadyExistsError,
    AuthError,
    BadRequestError,
    FleetError,
    NotFoundError,
    TransientError,
)

__all__ = ["rpc_errors"]

log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

_CODES: tuple[tuple[type[FleetError], grpc.StatusCode], ...] = (
    (BadRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (TransientError, grpc.StatusCode.UNAVAILABLE),
)


def _status(exc: FleetError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def _unavailable(context: Any, method: str, exc: Exception) -> None:
    log.warning("database unavailable in %s: %s", method, getattr(exc, "orig", exc))
    context.abort(grpc.StatusCode.UNAVAILABLE, "the fleet database is busy or unreachable; retry")


def rpc_errors(method: _F) -> _F:
    """Decorate a unary servicer method: FleetError -> status code, anything else -> INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return method(self, request, context)
        except FleetError as exc:
            context.abort(_status(exc), str(exc))
        except (OperationalError, InterfaceError, PendingRollbackError) as exc:
            # SQLite busy past its timeout, PostgreSQL restarting or unreachable: the caller
            # retries (agents do, soon and quietly) instead of seeing an internal error.
            _unavailable(context, method.__name__, exc)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            _unavailable(context, method.__name__, exc)
        except Exception:
            if isinstance(context.code(), grpc.StatusCode) and context.code() is not None:
                raise  # context.abort() already set the status
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
        return None  # unreachable: abort raises

    return wrapper  # type: ignore[return-value]


def abort_for(context: Any, exc: FleetError) -> None:
    """Abort a streaming call with the status that fits ``exc``."""
    context.abort(_status(exc), str(exc))
