"""``edgefleet-agent predict``: run a model once on an image and say what its outputs mean.

The decisions are pure functions over values: what kind of output a model has
(:func:`output_kind`), whether the flags asked for fit it (:func:`check_flags`), whether a
labels file fits its classes (:func:`label_names`), which detections pass the threshold
(:func:`detections`). :func:`predict` does the I/O around them.

- A classifier (one output of N classes, shaped [1,N] or [N], N >= 2) gets its top-k classes.
- A detector (the four outputs of a ``TFLite_Detection_PostProcess`` op) gets its boxes above
  a threshold, as normalized [ymin, xmin, ymax, xmax] and in pixels of the input image.
- Any other model (segmentation, pose, embeddings, ...) gets its output tensors described:
  name, shape, dtype, and min, max and mean of the (dequantized) values.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import InputError, UsageError
from agent.inference.metadata import DetectionHead, Normalization, read_processing
from agent.inference.modelfile import ModelInfo, TensorInfo
from agent.inference.preprocess import (
    Classification,
    image_to_tensor,
    input_normalization,
    load_image,
    read_labels,
    top_k,
)
from agent.terminal import printable

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_K",
    "Detection",
    "OutputKind",
    "PredictRequest",
    "PredictResult",
    "TensorSummary",
    "as_json",
    "as_text",
    "check_flags",
    "detections",
    "label_names",
    "output_kind",
    "predict",
    "summarize",
]

DEFAULT_TOP_K = 3
DEFAULT_THRESHOLD = 0.5
MAX_TOP_K = 1000
# "17 cat" or "17: cat": a labels file keyed by class id (Coral's detection labels skip ids).
_KEYED = re.compile(r"^\s*(\d{1,6})[\s:]+(\S.*?)\s*$")


class OutputKind(enum.Enum):
    """What a model's outputs are, for predict."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    TENSORS = "tensors"


@dataclass(frozen=True)
class Detection:
    """One detected object: its class, score and box ([ymin, xmin, ymax, xmax] normalized to
    0..1 of the image, and the same in pixels of the input image)."""

    index: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    box_pixels: tuple[int, int, int, int]


@dataclass(frozen=True)
class TensorSummary:
    """One output tensor as it came out: name, shape, dtype, and its real values' range."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    min: float
    max: float
    mean: float


@dataclass(frozen=True)
class PredictRequest:
    """What the user asked: a model, an image, and the optional flags (None: not given)."""

    model: Path
    image: Path
    labels: Path | None = None
    top_k: int | None = None
    threshold: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class PredictResult:
    """What predict found; exactly one of ``classes``, ``detections``, ``tensors`` is set."""

    kind: OutputKind
    normalization: Normalization
    image_size: tuple[int, int]  # (width, height) of the input image
    classes: tuple[Classification, ...] = ()
    detections: tuple[Detection, ...] = ()
    tensors: tuple[TensorSummary, ...] = ()
    threshold: float | None = None


def output_kind(
    info: ModelInfo, shapes: Sequence[tuple[int, ...]], head: DetectionHead | None
) -> tuple[OutputKind, str]:
    """What ``info``'s outputs are (with the reason), from the shapes a run produced."""
    if head is not None and len(shapes) == 4:
        boxes, classes = shapes[head.boxes], shapes[head.classes]
        scores, count = shapes[head.scores], shapes[head.count]
        n = boxes[1] if len(boxes) == 3 else -1
        if boxes == (1, n, 4) and classes == (1, n) and scores == (1, n) and count == (1,):
            return OutputKind.DETECTION, f"TFLite_Detection_PostProcess, up to {n} boxes"
        return OutputKind.TENSORS, (
            f"TFLite_Detection_PostProcess outputs shaped {[list(s) for s in shapes]}, not "
            "[1,N,4], [1,N], [1,N], [1]"
        )
    if len(shapes) == 1:
        shape = shapes[0]
        n = shape[-1] if shape else 0
        if shape in ((1, n), (n,)) and n >= 2:
            return OutputKind.CLASSIFICATION, f"one output of {n} classes"
        return OutputKind.TENSORS, f"one output shaped {list(shape)}, not [1,N] classes"
    return OutputKind.TENSORS, f"{len(shapes)} outputs and no detection post-process"


def check_flags(request: PredictRequest, kind: OutputKind, reason: str) -> None:
    """Refuse flags that do not apply to this kind of model.

    Raises:
        UsageError: ``--top-k`` on a non-classifier, ``--threshold`` on a non-detector,
            ``--labels`` on a model that has no classes.
    """
    if request.top_k is not None and kind is not OutputKind.CLASSIFICATION:
        raise UsageError(
            f"--top-k ranks classes, but {request.model.name} is not a classifier ({reason}); "
            "leave --top-k out"
        )
    if request.threshold is not None and kind is not OutputKind.DETECTION:
        raise UsageError(
            f"--threshold filters detections, but {request.model.name} is not a detector "
            f"({reason}); leave --threshold out"
        )
    if request.labels is not None and kind is OutputKind.TENSORS:
        raise UsageError(
            f"--labels names classes, but {request.model.name} has no class output ({reason}); "
            "leave --labels out"
        )


def label_names(lines: Sequence[str], classes: int, what: str) -> list[str]:
    """The names of classes 0..classes-1 from a labels file's lines.

    Either line i names class i, or every line reads "ID NAME" (Coral's detection labels,
    where ids may skip): then the file covers ids 0..max id. Trailing blank lines do not
    count. No off-by-one is forgiven: a labels file with one line more or fewer than the model
    has classes names every class wrong, so it is refused (ImageNet files for 1001-output
    models carry "background" on line 0, Coral's included).

    Raises:
        InputError: the file covers another number of classes than ``classes``.
    """
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    matches = [_KEYED.match(line) for line in lines]
    names: list[str]
    if lines and all(matches):
        keyed = {int(m.group(1)): m.group(2) for m in matches if m}
        count = max(keyed) + 1
        names = [keyed.get(i, str(i)) for i in range(count)] if count <= classes else []
        counted = f"ids 0..{count - 1}"
    else:
        count = len(lines)
        names = [line.strip() or str(i) for i, line in enumerate(lines)]
        counted = f"{count} labels"
    if count != classes:
        raise InputError(
            f"the labels file has {counted} but {what} has {classes} classes; "
            "use the labels file made for this model"
        )
    return names


def detections(
    outputs: Sequence[np.ndarray],
    head: DetectionHead,
    threshold: float,
    labels: Sequence[str] | None,
    image_size: tuple[int, int],
) -> list[Detection]:
    """The detections scoring at least ``threshold``, best first.

    A detection whose score, class or box is not a finite number (NaN, infinity) is no
    detection: it is left out, as is anything past the count the model reports.
    """
    boxes = np.asarray(outputs[head.boxes], dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(outputs[head.classes], dtype=np.float64).reshape(-1)
    scores = np.asarray(outputs[head.scores], dtype=np.float64).reshape(-1)
    reported = np.asarray(outputs[head.count], dtype=np.float64).reshape(-1)[:1]
    count = int(reported[0]) if reported.size and np.isfinite(reported[0]) else 0
    count = max(0, min(count, boxes.shape[0], classes.size, scores.size))
    width, height = image_size
    found = []
    for i in range(count):
        score = float(scores[i])
        if not np.isfinite(score) or score < threshold:
            continue
        if not (np.isfinite(classes[i]) and np.all(np.isfinite(boxes[i]))):
            continue
        index = int(classes[i])
        ymin, xmin, ymax, xmax = (float(v) for v in np.clip(boxes[i], 0.0, 1.0))
        found.append(
            Detection(
                index=index,
                label=labels[index] if labels and 0 <= index < len(labels) else str(index),
                score=score,
                box=(ymin, xmin, ymax, xmax),
                box_pixels=(
                    round(ymin * height),
                    round(xmin * width),
                    round(ymax * height),
                    round(xmax * width),
                ),
            )
        )
    found.sort(key=lambda d: -d.score)
    return found


def summarize(output: np.ndarray, tensor: TensorInfo) -> TensorSummary:
    """Describe one output tensor; quantized values are dequantized for the statistics."""
    values = output.astype(np.float64)
    if tensor.quantized:
        values = (values - tensor.zero_point) * tensor.scale
    empty = values.size == 0
    return TensorSummary(
        name=tensor.name,
        shape=tuple(int(d) for d in output.shape),
        dtype=str(output.dtype),
        min=0.0 if empty else float(values.min()),
        max=0.0 if empty else float(values.max()),
        mean=0.0 if empty else float(values.mean()),
    )


def predict(request: PredictRequest, **backend: Any) -> tuple[PredictResult, Any]:
    """Load the model, prepare the image, run it once and interpret the outputs.

    ``backend`` goes to :func:`agent.inference.engine.load_model` (Edge TPU options). Returns
    the result and the loaded model (for its backend and device).

    Raises:
        AgentError: (its subclasses) an unreadable model, image or labels file, a labels file
            that does not fit, flags that do not apply (:class:`UsageError`).
    """
    from agent.inference.engine import load_model  # noqa: PLC0415 - the runtime is heavy

    if request.top_k is not None and not 1 <= request.top_k <= MAX_TOP_K:
        raise UsageError(f"--top-k must be within 1..{MAX_TOP_K}")
    if request.threshold is not None and not 0.0 <= request.threshold <= 1.0:
        raise UsageError("--threshold must be within 0..1")
    model = load_model(request.model, request.model.stem, "local", workers=1, **backend)
    if len(model.info.inputs) != 1:
        raise InputError(
            f"{request.model.name} has {len(model.info.inputs)} inputs; "
            "predict takes one image input"
        )
    tensor = model.info.inputs[0]
    processing = read_processing(request.model)
    normalization = input_normalization(
        tensor, processing.input_normalization[0], request.mean, request.std
    )
    image = load_image(request.image)
    outputs = model.infer([image_to_tensor(image, tensor, normalization)])
    shapes = [tuple(int(d) for d in o.shape) for o in outputs]
    kind, reason = output_kind(model.info, shapes, processing.detection)
    check_flags(request, kind, reason)
    lines = read_labels(request.labels) if request.labels is not None else None
    common: dict[str, Any] = {
        "kind": kind,
        "normalization": normalization,
        "image_size": image.size,
    }
    if kind is OutputKind.CLASSIFICATION:
        classes = shapes[0][-1]
        names = label_names(lines, classes, request.model.name) if lines is not None else None
        ranked = top_k(outputs[0], model.info.outputs[0], request.top_k or DEFAULT_TOP_K, names)
        return PredictResult(classes=tuple(ranked), **common), model
    head = processing.detection
    if kind is OutputKind.DETECTION and head is not None:  # DETECTION comes with a head
        what = f"{request.model.name}'s detection post-process"
        names = label_names(lines, head.num_classes, what) if lines is not None else None
        threshold = DEFAULT_THRESHOLD if request.threshold is None else request.threshold
        found = detections(outputs, head, threshold, names, image.size)
        return PredictResult(detections=tuple(found), threshold=threshold, **common), model
    summaries = tuple(summarize(o, t) for o, t in zip(outputs, model.info.outputs, strict=True))
    return PredictResult(tensors=summaries, **common), model


def _number(value: float) -> float | None:
    """A value for JSON: rounded, and null when not finite (JSON has no NaN or infinity)."""
    return round(value, 6) if math.isfinite(value) else None


def as_json(result: PredictResult) -> dict[str, Any]:
    """``result`` as the JSON object ``predict --json`` prints (without model and backend).
    A score or statistic that is NaN or infinite (a model can output those) is null."""
    data: dict[str, Any] = {
        "kind": result.kind.value,
        "normalization": {
            "mean": list(result.normalization.mean),
            "std": list(result.normalization.std),
            "source": result.normalization.source,
        },
    }
    if result.kind is OutputKind.CLASSIFICATION:
        data["top_k"] = [
            {"label": r.label, "index": r.index, "score": _number(r.score)} for r in result.classes
        ]
    elif result.kind is OutputKind.DETECTION:
        width, height = result.image_size
        data["threshold"] = result.threshold
        data["image_size"] = {"width": width, "height": height}
        data["detections"] = [
            {
                "label": d.label,
                "index": d.index,
                "score": _number(d.score),
                "box": [round(v, 6) for v in d.box],
                "box_pixels": list(d.box_pixels),
            }
            for d in result.detections
        ]
    else:
        data["outputs"] = [
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "min": _number(t.min),
                "max": _number(t.max),
                "mean": _number(t.mean),
            }
            for t in result.tensors
        ]
    return data


def as_text(result: PredictResult) -> list[str]:
    """``result`` as the lines ``predict`` prints (control characters in labels and tensor
    names, which come from files, escaped)."""
    return [printable(line) for line in _text_lines(result)]


def _text_lines(result: PredictResult) -> list[str]:
    if result.kind is OutputKind.CLASSIFICATION:
        return [f"{r.score:8.4f}  {r.index:5d}  {r.label}" for r in result.classes]
    if result.kind is OutputKind.DETECTION:
        width, height = result.image_size
        lines = [
            f"{len(result.detections)} detection(s) with score >= {result.threshold:g}; boxes "
            f"as ymin,xmin,ymax,xmax in pixels of the {width}x{height} input image "
            "(--json adds them normalized to 0..1)"
        ]
        lines += [
            f"{d.score:8.4f}  {d.index:5d}  {d.label:20s} "
            f"{d.box_pixels[0]},{d.box_pixels[1]},{d.box_pixels[2]},{d.box_pixels[3]}"
            for d in result.detections
        ]
        return lines
    lines = [
        f"not a classifier or detector: {len(result.tensors)} output tensor(s), "
        "values dequantized for min/max/mean"
    ]
    lines += [
        f"{t.name}  {list(t.shape)}  {t.dtype}  min {t.min:.4g}  max {t.max:.4g}  mean {t.mean:.4g}"
        for t in result.tensors
    ]
    return lines
