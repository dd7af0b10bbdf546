"""A folder of images as calibration or evaluation data for an image model.

Each image (JPEG, PNG, BMP, GIF, WebP, TIFF, PPM) is decoded, resized and normalized for the
model's input exactly as ``edgefleet-agent predict`` prepares it on a device: bilinear resize to
the input's height and width, pixels mapped by ``(p - mean) / std`` with the mean and std of
the model's TFLite metadata (else 127.5 and 127.5), stored as float32 for the float model.

Labels are optional: a ``labels.csv`` in the folder with rows ``file,label``, where a label is
a class index or a class name of the labels file given with ``--labels`` (line i names class i).
With labels, every image needs one. Files of other kinds are skipped and counted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import InputError, ModelFileError
from agent.inference.modelfile import ModelInfo, inspect_model_file
from agent.inference.preprocess import image_to_tensor, load_image, model_normalization, read_labels
from fleet_server.errors import BadRequestError

__all__ = ["IMAGE_SUFFIXES", "LABELS_CSV", "ImageSet", "load_images"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
LABELS_CSV = "labels.csv"
BUDGET_BYTES = 1 << 30  # of prepared inputs: 1000 224x224x3 images take 602 MB
_MAX_CSV_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ImageSet:
    x: np.ndarray  # (images, ...the input's shape without its batch axis), float32
    y: np.ndarray | None  # class indices, when the folder has labels.csv
    files: tuple[str, ...]
    skipped: int  # files that are not images (by suffix), besides labels.csv
    left_out: int  # images past ``limit``


def load_images(
    folder: Path,
    model: Path,
    *,
    labels: Path | None = None,
    limit: int = 1000,
    budget_bytes: int = BUDGET_BYTES,
) -> ImageSet:
    """The images of ``folder`` (sorted by name, at most ``limit``, and at most what fits in
    ``budget_bytes`` of float32 inputs) as inputs of ``model``.

    Raises:
        BadRequestError: no such folder, no image in it, an image that cannot be decoded
            (named), a model input that is not an image, or labels that do not fit.
    """
    if not folder.is_dir():
        raise BadRequestError(f"{folder} is not a folder of images")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    skipped = len([n for n in names if n not in images and n != LABELS_CSV])
    if not images:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise BadRequestError(f"{folder} holds no image ({kinds})")
    try:
        info = inspect_model_file(model)
    except ModelFileError as exc:
        raise BadRequestError(str(exc)) from exc
    if len(info.inputs) != 1:
        raise BadRequestError(f"{model.name} has {len(info.inputs)} inputs; images feed one")
    tensor = info.inputs[0]
    shape = tuple(int(d) for d in tensor.shape[1:])
    per_image = 4 * int(np.prod(shape)) if shape else 4
    limit = max(1, min(limit, budget_bytes // per_image))  # a 1080p input: about 40 images
    left_out = max(0, len(images) - limit)
    images = images[:limit]
    x = np.empty((len(images), *shape), dtype=np.float32)  # filled in place: no copies
    try:
        normalization = model_normalization(model, tensor)
        for i, name in enumerate(images):
            x[i] = image_to_tensor(load_image(folder / name), tensor, normalization)[0]
    except (InputError, ModelFileError) as exc:
        raise BadRequestError(f"{folder}: {exc}") from exc
    except ValueError as exc:  # an image tensor that is not this input's shape
        raise BadRequestError(
            f"{folder}: {model.name}'s input {list(tensor.shape)}: {exc}"
        ) from exc
    classes = _classes(info)
    y = _labels(folder, images, labels, classes) if (folder / LABELS_CSV).exists() else None
    return ImageSet(x, y, tuple(images), skipped, left_out)


def _classes(info: ModelInfo) -> int | None:
    """How many classes a one-output classifier has (its output's last axis), or None."""
    if len(info.outputs) != 1 or not info.outputs[0].shape:
        return None
    return int(info.outputs[0].shape[-1])


def _labels(
    folder: Path, images: list[str], labels: Path | None, classes: int | None
) -> np.ndarray:
    """The class index of every image, from ``labels.csv`` (and the labels file for names)."""
    path = folder / LABELS_CSV
    if not path.is_file():
        raise BadRequestError(f"{path} is not a file")
    with path.open("rb") as handle:
        raw = handle.read(_MAX_CSV_BYTES + 1)
    if len(raw) > _MAX_CSV_BYTES:
        raise BadRequestError(f"{path} is larger than {_MAX_CSV_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    try:
        names = read_labels(labels) if labels is not None else None
    except InputError as exc:
        raise BadRequestError(str(exc)) from exc
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, name in enumerate(names or []):
        name = name.strip()  # noqa: PLW2901
        if name in index:
            ambiguous.add(name)
        elif name:
            index[name] = i
    given: dict[str, int] = {}
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line == 1 and [c.strip().lower() for c in row] == ["file", "label"]):
            continue
        if len(row) != 2:
            raise BadRequestError(f"{path}:{line}: expected file,label, got {len(row)} fields")
        file, label = row[0].strip(), row[1].strip()
        if label.isascii() and label.isdigit():
            value = int(label)
        elif label in ambiguous:
            raise BadRequestError(f"{path}:{line}: {label!r} names several classes; give its index")
        elif label in index:
            value = index[label]
        else:
            hint = "" if names is not None else " (class names need --labels FILE)"
            raise BadRequestError(f"{path}:{line}: unknown class {label!r}{hint}")
        if classes is not None and value >= classes:
            raise BadRequestError(f"{path}:{line}: class {label} is past the model's {classes}")
        if given.get(file, value) != value:
            raise BadRequestError(f"{path}:{line}: {file} has two different labels")
        given[file] = value
    absent = [f for f in given if not (folder / f).is_file()]
    if absent:
        raise BadRequestError(f"{path} names files that are not in {folder}: {absent[:3]}")
    missing = [n for n in images if n not in given]
    if missing:
        raise BadRequestError(
            f"{path} labels {len(images) - len(missing)} of {len(images)} images; "
            f"no label for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    return np.asarray([given[n] for n in images], dtype=np.int64)
