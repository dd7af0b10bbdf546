"""Errors raised by the fleet server and its CLIs."""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "DataDirError",
    "FleetError",
    "NotFoundError",
    "TransientError",
]


class FleetError(Exception):
    """Base of every error the server reports to a user."""


class DataDirError(FleetError):
    """The data directory is missing, incomplete or of another format."""


class BadRequestError(FleetError):
    """Input from a client is invalid (maps to INVALID_ARGUMENT)."""


class NotFoundError(FleetError):
    """A named object does not exist (maps to NOT_FOUND)."""


class AlreadyExistsError(FleetError):
    """An object with that identity exists already (maps to ALREADY_EXISTS)."""


class AuthError(FleetError):
    """Missing or wrong credentials (maps to UNAUTHENTICATED / PERMISSION_DENIED)."""


class ConflictError(FleetError):
    """The object is in a state that does not allow this (maps to FAILED_PRECONDITION)."""


class TransientError(FleetError):
    """Something the server depends on (its MQTT broker, say) cannot be reached now; retrying
    later may work (maps to UNAVAILABLE)."""
