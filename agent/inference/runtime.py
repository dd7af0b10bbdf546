"""Which TFLite runtime this device has: LiteRT first, tflite-runtime as a fallback."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from agent.errors import RuntimeMissingError

__all__ = ["Runtime", "find_runtime"]


@dataclass(frozen=True)
class Runtime:
    """An importable TFLite runtime and what to report about it."""

    name: str  # the distribution name: "ai-edge-litert" | "tflite-runtime"
    version: str
    interpreter_cls: Any
    load_delegate: Any


_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
)


def find_runtime() -> Runtime:
    """Import the best available runtime.

    Raises:
        RuntimeMissingError: neither ai-edge-litert nor tflite-runtime is installed.
    """
    for dist, module_name in _CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return Runtime(dist, version, module.Interpreter, module.load_delegate)
    raise RuntimeMissingError(
        "no TFLite runtime found: install ai-edge-litert (pip install 'edgefleet[agent]')"
    )
