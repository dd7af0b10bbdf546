"""Turn an image into a model's input tensor, and a model's output into ranked classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.errors import InputError
from agent.inference.modelfile import TensorInfo

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Classification", "image_to_tensor", "load_image", "read_labels", "top_k"]

_MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_MAX_LABELS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Classification:
    """One ranked class."""

    index: int
    score: float
    label: str


def load_image(path: Path) -> Image:
    """Open an image file (any format Pillow reads).

    Raises:
        InputError: missing, unreadable or not an image.
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - only predict needs Pillow

    Image.MAX_IMAGE_PIXELS = _MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError as exc:
        raise InputError(f"image {path} does not exist") from exc
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path} is not a readable image: {exc}") from exc


def _layout(tensor: TensorInfo) -> tuple[int, int, int]:
    """(height, width, channels) of an image input shaped [1,H,W], [1,H,W,C] or [H,W,C]."""
    shape = tensor.shape
    if len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3):
        return shape[1], shape[2], shape[3]
    if len(shape) == 3 and shape[0] == 1:
        return shape[1], shape[2], 1
    if len(shape) == 3 and shape[2] in (1, 3):
        return shape[0], shape[1], shape[2]
    raise InputError(
        f"input {tensor.name!r} has shape {list(shape)}; an image input must be "
        "[1,H,W,3], [1,H,W,1] or [1,H,W]"
    )


def _default_normalization(tensor: TensorInfo) -> tuple[float, float]:
    """(mean, std) mapping pixels 0..255 onto what the model's input expects.

    A quantized input declares its real-valued range through its scale and zero point; pixels are
    spread over exactly that range (for the usual uint8 image models this feeds raw pixels).
    Float inputs get [-1, 1], the convention of MobileNet-family classifiers.
    """
    if tensor.quantized and tensor.dtype in ("uint8", "int8"):
        info = np.iinfo(np.dtype(tensor.dtype))
        real_min = (info.min - tensor.zero_point) * tensor.scale
        real_max = (info.max - tensor.zero_point) * tensor.scale
        std = 255.0 / (real_max - real_min)
        return -real_min * std, std
    return 127.5, 127.5


def image_to_tensor(
    image: Image, tensor: TensorInfo, mean: float | None = None, std: float | None = None
) -> np.ndarray:
    """Resize ``image`` to the input's size and encode it in the input's dtype.

    Each pixel p becomes the real value (p - mean) / std, then, for a quantized input, the
    integer round(real / scale) + zero_point clipped to the dtype's range.

    Raises:
        InputError: the input is not image-shaped, or its dtype is unsupported.
    """
    height, width, channels = _layout(tensor)
    default_mean, default_std = _default_normalization(tensor)
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
    if std == 0:
        raise InputError("std must not be 0")
    mode = "L" if channels == 1 else "RGB"
    resized = image.convert(mode).resize((width, height), resample=2)  # 2 = bilinear
    pixels = np.asarray(resized, dtype=np.float32)
    real = (pixels - mean) / std
    dtype = np.dtype(tensor.dtype)
    if dtype.kind == "f":
        data = real.astype(dtype)
    elif dtype in (np.uint8, np.int8, np.int16) and tensor.quantized:
        info = np.iinfo(dtype)
        data = np.clip(np.round(real / tensor.scale) + tensor.zero_point, info.min, info.max)
        data = data.astype(dtype)
    elif dtype == np.uint8:
        data = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    else:
        raise InputError(f"input {tensor.name!r} has dtype {tensor.dtype}; cannot encode an image")
    return data.reshape(tensor.shape)


def read_labels(path: Path) -> list[str]:
    """Labels, one per line; line i names class i. ``"3 cat"`` style prefixes are kept as is.

    Raises:
        InputError: missing, unreadable or too large.
    """
    try:
        if path.stat().st_size > _MAX_LABELS_BYTES:
            raise InputError(f"labels file {path} is larger than {_MAX_LABELS_BYTES} bytes")
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels {path}: {exc}") from exc


def top_k(
    output: np.ndarray, tensor: TensorInfo, k: int, labels: list[str] | None = None
) -> list[Classification]:
    """The ``k`` best classes of a classifier output, scores dequantized to real values."""
    scores = output.astype(np.float64).reshape(-1)
    if tensor.quantized:
        scores = (scores - tensor.zero_point) * tensor.scale
    k = max(1, min(k, scores.size))
    # Stable sort so equal scores rank by index, the same on every run and machine.
    order = np.argsort(-scores, kind="stable")[:k]
    return [
        Classification(
            index=int(i),
            score=float(scores[i]),
            label=labels[i] if labels is not None and i < len(labels) else str(int(i)),
        )
        for i in order
    ]
