"""Turn an image into a model's input tensor, and a model's output into ranked classes."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent._fs import read_regular
from agent.errors import InputError
from agent.inference.metadata import Normalization, read_processing
from agent.inference.modelfile import TensorInfo

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "Classification",
    "image_to_tensor",
    "input_normalization",
    "load_image",
    "model_normalization",
    "read_labels",
    "top_k",
]

_MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_MAX_IMAGE_BYTES = 256 * 1024 * 1024  # read whole: a compressed image is far smaller
_MAX_LABELS_BYTES = 16 * 1024 * 1024
# Pixels 0..255 onto [-1, 1] when neither the model's metadata nor a flag says otherwise.
DEFAULT_MEAN = (127.5,)
DEFAULT_STD = (127.5,)
_PIXEL_RANGE = np.array([[0.0], [255.0]], dtype=np.float32)
_GIVEN_BY = {
    "flags": "given by --mean/--std",
    "metadata": "from the model's TFLite metadata",
    "default": "the default",
}


@dataclass(frozen=True)
class Classification:
    """One ranked class."""

    index: int
    score: float
    label: str


def load_image(path: Path) -> Image:
    """Open an image file (any format Pillow reads) of at most 64 Mpixels.

    Raises:
        InputError: missing, unreadable, not a regular file, too large, or not an image.
    """
    try:
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - only predict needs it
    except ImportError as exc:  # the .deb only recommends python3-pil
        raise InputError(
            "reading images needs Pillow, which is not installed: apt install python3-pil "
            "(the agent's package recommends it) or pip install pillow"
        ) from exc

    try:
        data = read_regular(path, _MAX_IMAGE_BYTES)
    except FileNotFoundError as exc:
        raise InputError(f"image {path} does not exist") from exc
    except OSError as exc:
        raise InputError(f"{path} is not a readable image: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; ours is a limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > _MAX_IMAGE_PIXELS:
                    raise InputError(
                        f"{path} is {width}x{height} pixels, more than the "
                        f"{_MAX_IMAGE_PIXELS} predict decodes; scale it down"
                    )
                img.load()
                return img.copy()
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{path} is not an image Pillow can read (JPEG, PNG, BMP, GIF, TIFF, WebP...)"
        ) from exc
    except (
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"{path} is not a readable image: {exc}") from exc


def _layout(tensor: TensorInfo) -> tuple[int, int, int]:
    """(height, width, channels) of an image input shaped [1,H,W], [1,H,W,C] or [H,W,C] of at
    most 64 Mpixels (a shape from a file or an agent's answer, not to be trusted)."""
    shape = tensor.shape
    layout = None
    if len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3):
        layout = shape[1], shape[2], shape[3]
    elif len(shape) == 3 and shape[0] == 1:
        layout = shape[1], shape[2], 1
    elif len(shape) == 3 and shape[2] in (1, 3):
        layout = shape[0], shape[1], shape[2]
    if layout is not None and 1 <= layout[0] * layout[1] <= _MAX_IMAGE_PIXELS and min(layout) > 0:
        return layout
    raise InputError(
        f"input {tensor.name!r} has shape {list(shape)}; an image input must be "
        f"[1,H,W,3], [1,H,W,1] or [1,H,W], of 1..{_MAX_IMAGE_PIXELS} pixels"
    )


def input_normalization(
    tensor: TensorInfo,
    from_metadata: Normalization | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Normalization:
    """The ``(x - mean) / std`` that maps pixels 0..255 onto what ``tensor`` expects.

    Flags (``mean``, ``std``) win; then the model's TFLite metadata (its input's
    NormalizationOptions); else the documented default mean 127.5, std 127.5, pixels onto
    [-1, 1], the convention of MobileNet-family models (and of Coral's examples). The default
    is the same for float and quantized inputs: a quantized input's scale and zero point say
    how real values are stored, not which real values the model was trained on.

    Raises:
        InputError: a mean or std with neither one value nor one per channel, not finite,
            a std of 0, or one so small that pixels become infinite.
    """
    channels = _layout(tensor)[2]
    base = from_metadata or Normalization(DEFAULT_MEAN, DEFAULT_STD, "default")
    chosen = Normalization(
        mean=tuple(float(v) for v in mean) if mean is not None else base.mean,
        std=tuple(float(v) for v in std) if std is not None else base.std,
        source="flags" if mean is not None or std is not None else base.source,
    )
    given = _GIVEN_BY[chosen.source]
    for what, values in (("mean", chosen.mean), ("std", chosen.std)):
        if len(values) not in (1, channels):
            raise InputError(
                f"{what} has {len(values)} values; input {tensor.name!r} has {channels} "
                f"channel(s): give one value or one per channel ({what} {given})"
            )
        if not all(np.isfinite(values)):
            raise InputError(f"{what} {list(values)} ({given}) is not finite")
    if any(v == 0 for v in chosen.std):
        raise InputError(f"std must not be 0 ({given})")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        mean_32 = np.asarray(chosen.mean, dtype=np.float32)
        extremes = (_PIXEL_RANGE - mean_32) / np.asarray(chosen.std, dtype=np.float32)
    if not np.all(np.isfinite(extremes)):
        raise InputError(
            f"mean {list(chosen.mean)} and std {list(chosen.std)} ({given}) take pixels "
            "0..255 beyond the float32 range; give --mean and --std"
        )
    return chosen


def model_normalization(
    model: Path,
    tensor: TensorInfo,
    index: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Normalization:
    """:func:`input_normalization` of input ``index`` of the model file ``model``, its
    metadata read from the file (unless both flags are given).

    Raises:
        ModelFileError: the model's metadata is corrupt.
        InputError: see :func:`input_normalization`.
    """
    from_metadata = None
    if mean is None or std is None:
        found = read_processing(model).input_normalization
        from_metadata = found[index] if index < len(found) else None
    return input_normalization(tensor, from_metadata, mean, std)


def _eight_bit(image: Image) -> Image:
    """A 16-bit or float grey image scaled to 8 bits (Pillow's convert clips them at 255,
    which turns most of a 16-bit image white); any other image as it is."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    from PIL import Image as PilImage  # noqa: PLC0415 - only predict and model build need it

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:  # I;16*: 16 bits; I: 32 bits, in practice a 16-bit PNG
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    scaled = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return PilImage.fromarray(scaled)  # 2-D uint8: mode "L"


def image_to_tensor(
    image: Image, tensor: TensorInfo, normalization: Normalization | None = None
) -> np.ndarray:
    """Resize ``image`` to the input's size and encode it in the input's dtype.

    Each pixel p of channel c becomes the real value (p - mean[c]) / std[c] (``normalization``,
    by default :func:`input_normalization` without metadata or flags), then, for a quantized
    input, the integer round(real / scale) + zero_point clipped to the dtype's range. A uint8
    input without quantization takes the raw pixels.

    Raises:
        InputError: the input is not image-shaped, its dtype is unsupported, or the
            normalization does not fit its channels.
    """
    height, width, channels = _layout(tensor)
    if normalization is None:
        normalization = input_normalization(tensor)
    mode = "L" if channels == 1 else "RGB"
    resized = _eight_bit(image).convert(mode).resize((width, height), resample=2)  # bilinear
    pixels = np.asarray(resized, dtype=np.float32)
    if pixels.ndim == 2:  # "L": no channel axis; one value per channel is one value
        pixels = pixels[..., np.newaxis]
    mean = np.asarray(normalization.mean, dtype=np.float32)
    std = np.asarray(normalization.std, dtype=np.float32)
    if mean.size not in (1, channels) or std.size not in (1, channels) or not np.all(std):
        raise InputError(
            f"normalization mean {list(normalization.mean)}, std {list(normalization.std)} "
            f"does not fit input {tensor.name!r} with {channels} channel(s)"
        )
    real = (pixels - mean) / std
    try:
        dtype = np.dtype(tensor.dtype)
    except TypeError:
        raise InputError(
            f"input {tensor.name!r} has dtype {tensor.dtype}; cannot encode an image"
        ) from None
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
        return read_regular(path, _MAX_LABELS_BYTES).decode("utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read labels {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read labels {path}: not UTF-8 text ({exc.reason})") from exc


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
