"""Local inference: model inspection, LiteRT runtime, pre/post-processing, the OIP v2 API."""

from __future__ import annotations

from agent.inference.engine import Engine, EngineOptions, LoadedModel, load_model
from agent.inference.modelfile import ModelInfo, TensorInfo, inspect_model_bytes, inspect_model_file

__all__ = [
    "Engine",
    "EngineOptions",
    "LoadedModel",
    "ModelInfo",
    "TensorInfo",
    "inspect_model_bytes",
    "inspect_model_file",
    "load_model",
]
