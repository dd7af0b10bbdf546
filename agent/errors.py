"""Errors raised by the agent. Messages name the actual values and say what to do."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "DelegateError",
    "DownloadError",
    "DownloadStalledError",
    "EnrollmentError",
    "InferenceError",
    "InputError",
    "ManifestError",
    "ModelFileError",
    "ModelNotFoundError",
    "QueueFullError",
    "RuntimeMissingError",
    "ServerUnavailableError",
    "SocketError",
    "TransientError",
    "UnsupportedModelError",
    "UsageError",
]


class AgentError(Exception):
    """Base of every error the agent reports to a user."""


class TransientError(AgentError):
    """Worth retrying later with backoff (network, server restart)."""


class ConfigError(AgentError):
    """The configuration file or a flag is invalid."""


class UsageError(ConfigError):
    """A flag that does not apply to what was asked, a file that is missing or not what it
    must be, a flag out of its bounds (a command exits 2 for it, as for argparse's own usage
    errors)."""


class ModelFileError(AgentError):
    """A file is not a loadable TFLite model."""


class UnsupportedModelError(AgentError):
    """A valid model that this device cannot run (e.g. Edge TPU-compiled, no Edge TPU)."""


class RuntimeMissingError(AgentError):
    """No TFLite runtime (ai-edge-litert or tflite-runtime) is importable."""


class InputError(AgentError):
    """Input data (an image, a tensor) does not fit the model."""


class InferenceError(AgentError):
    """The runtime failed while running a model."""


class QueueFullError(AgentError):
    """A model's request queue is full; the caller should retry later (RESOURCE_EXHAUSTED)."""


class ModelNotFoundError(AgentError):
    """No model of that name (and version) is known to the engine (NOT_FOUND)."""


class DelegateError(AgentError):
    """A hardware delegate (the Edge TPU) could not be loaded for a model."""


class ManifestError(AgentError):
    """A signed manifest failed verification; the update is refused."""


class DownloadError(TransientError):
    """An artifact download failed or its bytes did not match the manifest."""


class DownloadStalledError(DownloadError):
    """A download received nothing for its stall timeout and was cancelled (a dead connection
    or a stuck server); what arrived is kept to resume from."""


class ServerUnavailableError(TransientError):
    """The fleet server could not be reached."""


class EnrollmentError(AgentError):
    """The server refused to enroll this device."""


class SocketError(AgentError):
    """The running agent's local socket cannot be reached: missing, closed to the caller's
    groups, or nobody listening (``edgefleet-agent status`` exits 3)."""
