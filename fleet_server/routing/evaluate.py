"""Choose a cascade threshold from labelled data: accuracy, cloud share and cost per threshold.

A cascade answers from the local model and asks the cloud model only when the local top score
is under the threshold. Given both models' scores on the same labelled samples, every threshold
has an accuracy, a share of requests sent to the cloud and a cost; the recommended threshold is
the cheapest whose accuracy is within ``max_drop`` of the cloud model alone.

:func:`sweep` and :func:`recommend` are pure; :func:`scores` runs a model with LiteRT.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.inference.runtime import find_runtime
from fleet_server.errors import BadRequestError

__all__ = ["Row", "Scores", "recommend", "scores", "sweep", "thresholds"]


@dataclass(frozen=True)
class Scores:
    """A model's output scores on every sample, and its median latency per sample."""

    values: np.ndarray  # (samples, classes)
    median_ms: float
    p95_ms: float = 0.0


@dataclass(frozen=True)
class Row:
    threshold: float
    accuracy: float
    cloud_share: float
    cost_per_million: float  # USD


def thresholds() -> list[float]:
    """0, 0.05, ... 0.95 and a finer 0.96 ... 0.99, then 1 (everything to the cloud)."""
    coarse = [round(i * 0.05, 2) for i in range(20)]
    fine = [round(0.96 + i * 0.01, 2) for i in range(4)]
    return [*coarse, *fine, 1.0]


def sweep(
    local: np.ndarray,
    cloud: np.ndarray,
    labels: np.ndarray,
    candidates: Sequence[float],
    *,
    local_cost: float,
    cloud_cost: float,
) -> list[Row]:
    """One row per threshold: a request goes to the cloud when the local top score is under it.

    The local model runs on every request (that is how the cascade learns its score), so each
    costs ``local_cost`` plus ``cloud_cost`` when forwarded. Threshold 0 is local only;
    threshold 1 is cloud only (no local run).
    """
    if local.shape != cloud.shape or local.shape[0] != labels.shape[0]:
        raise BadRequestError(
            f"scores {local.shape} and {cloud.shape} do not match {labels.shape[0]} labels"
        )
    top = local.max(axis=1)
    local_pred, cloud_pred = local.argmax(axis=1), cloud.argmax(axis=1)
    rows = []
    for threshold in candidates:
        to_cloud = top < threshold if threshold < 1.0 else np.ones_like(top, dtype=bool)
        predicted = np.where(to_cloud, cloud_pred, local_pred)
        share = float(to_cloud.mean())
        rows.append(
            Row(
                threshold=float(threshold),
                accuracy=float((predicted == labels).mean()),
                cloud_share=share,
                cost_per_million=1e6
                * ((0.0 if threshold >= 1.0 else local_cost) + share * cloud_cost),
            )
        )
    return rows


def recommend(rows: Sequence[Row], cloud_accuracy: float, max_drop: float) -> Row | None:
    """The cheapest row whose accuracy is at least ``cloud_accuracy - max_drop`` (ties: the
    lower threshold); None when no threshold is that accurate."""
    good = [r for r in rows if r.accuracy >= cloud_accuracy - max_drop - 1e-12]
    if not good:
        return None
    return min(good, key=lambda r: (r.cost_per_million, r.threshold))


def scores(model: Path, samples: np.ndarray) -> Scores:
    """Run a single-input, single-output TFLite model on every sample (batch of one), with
    quantized inputs and outputs converted from and to real values.

    Raises:
        BadRequestError: the model cannot be loaded, or the samples do not fit its input.
    """
    interpreter_cls = find_runtime().interpreter_cls  # the agent's: LiteRT, else tflite_runtime

    try:
        interpreter = interpreter_cls(model_path=str(model), num_threads=1)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BadRequestError(f"cannot load {model}: {exc}") from exc
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise BadRequestError(
            f"{model} has {len(inputs)} inputs and {len(outputs)} outputs; routing evaluation "
            "needs a classifier with one of each"
        )
    source, sink = inputs[0], outputs[0]
    shape = tuple(int(d) for d in source["shape"])
    if tuple(samples.shape[1:]) != shape[1:]:
        raise BadRequestError(
            f"the data's samples are {tuple(samples.shape[1:])}; {model.name} takes {shape[1:]}"
        )
    in_scale, in_zero = source["quantization"]
    out_scale, out_zero = sink["quantization"]
    dtype = np.dtype(source["dtype"])
    result = []
    times = []
    for sample in samples:
        x = sample[None, ...].astype(np.float32)
        if np.issubdtype(dtype, np.integer) and in_scale:
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max)
        start = time.perf_counter()
        interpreter.set_tensor(source["index"], x.astype(dtype))
        interpreter.invoke()
        out = interpreter.get_tensor(sink["index"]).astype(np.float32)
        times.append(time.perf_counter() - start)
        if out_scale:
            out = (out - out_zero) * out_scale
        result.append(out.reshape(-1))
    return Scores(
        np.stack(result),
        float(np.median(times) * 1000),
        float(np.percentile(times, 95) * 1000),
    )
