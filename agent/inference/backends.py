"""Which backend runs a model, and loading the Edge TPU delegate.

The choice is pure (:func:`choose_backend`): an Edge TPU-compiled model goes to the Edge TPU
(spread over several TPUs by how many models each already serves), anything else to the CPU
with XNNPACK. An Edge TPU model on a device without a TPU is refused before anything is loaded.

:func:`load_edgetpu_delegate` turns the three ways libedgetpu fails to load into one
:class:`DelegateError` with the reason: the library is missing (OSError), it is not a delegate
plugin (AttributeError), or it refuses the device (ValueError: no such TPU).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import DelegateError, UnsupportedModelError
from agent.inference.modelfile import ModelInfo

__all__ = ["BackendChoice", "choose_backend", "load_edgetpu_delegate"]

_PLUGIN_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


@dataclass(frozen=True)
class BackendChoice:
    """Where a model runs and why."""

    backend: str  # "cpu" | "edgetpu"
    device: str  # "usb:0", "pci:0" for the Edge TPU; "" for the CPU
    reason: str


def choose_backend(
    info: ModelInfo,
    edgetpus: Sequence[str],
    models_per_tpu: Mapping[str, int],
    *,
    prefer: str = "auto",
    num_threads: int = 1,
) -> BackendChoice:
    """Pick the backend of a model on this device.

    Raises:
        UnsupportedModelError: an Edge TPU-compiled model and no Edge TPU (or ``prefer="cpu"``).
    """
    if info.edgetpu:
        if prefer == "cpu":
            raise UnsupportedModelError(
                "the model is compiled for the Edge TPU and the CPU backend was requested; "
                "use the model's CPU variant"
            )
        if not edgetpus:
            raise UnsupportedModelError(
                "the model is compiled for the Edge TPU (contains edgetpu-custom-op) and this "
                "device has no Edge TPU; deploy the CPU variant of this model instead"
            )
        device = min(edgetpus, key=lambda d: (models_per_tpu.get(d, 0), d))
        others = models_per_tpu.get(device, 0)
        return BackendChoice(
            "edgetpu",
            device,
            f"compiled for the Edge TPU; {device} serves {others} other model(s)",
        )
    if prefer == "edgetpu":
        return BackendChoice(
            "cpu", "", "not compiled for the Edge TPU (no edgetpu-custom-op); running on the CPU"
        )
    return BackendChoice("cpu", "", f"CPU model: XNNPACK with {num_threads} thread(s)")


def load_edgetpu_delegate(load_delegate: Any, library: str, device: str) -> Any:
    """Load the Edge TPU delegate for ``device`` from ``library``.

    The library is checked first, so a wrong or missing library is reported without the
    runtime's own noisy clean-up of a half-built delegate.

    Raises:
        DelegateError: the library is missing, is not a delegate plugin, or has no such device.
    """
    try:
        handle = ctypes.CDLL(library)
    except OSError as exc:
        raise DelegateError(
            f"cannot load {library}: {exc}. Install libedgetpu (Coral's apt repository) or "
            "deploy the CPU variant"
        ) from exc
    missing = [name for name in _PLUGIN_SYMBOLS if not hasattr(handle, name)]
    if missing:
        raise DelegateError(f"{library} is not a TFLite delegate plugin (no {', '.join(missing)})")
    try:
        return load_delegate(library, {"device": device})
    except ValueError as exc:
        raise DelegateError(
            f"the Edge TPU {device} is not available (unplugged, in use, or no permission on the "
            f"device node): {exc}"
        ) from exc
    except (OSError, AttributeError) as exc:
        raise DelegateError(f"cannot load the Edge TPU delegate from {library}: {exc}") from exc
