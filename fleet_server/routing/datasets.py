"""Labelled data for evaluating models: a NumPy file, or a dataset shipped in a package.

``sklearn:digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes),
split in half per class with a fixed seed: the first half is what ``scripts/train_digits.py``
trains on, the second half is what evaluations score. Pixels are scaled to 0..1 and flattened
to 64 floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleet_server.errors import BadRequestError

__all__ = ["Dataset", "digits", "load", "samples"]


@dataclass(frozen=True)
class Dataset:
    """Training and held-out samples; ``test_x[i]`` is one model input without its batch axis."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def digits() -> Dataset:
    """scikit-learn's digits, split in half per class (seed 0).

    Raises:
        BadRequestError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - optional
    except ImportError as exc:
        raise BadRequestError(
            "sklearn:digits needs scikit-learn (pip install 'edgefleet[eval]'), or pass an "
            ".npz file with arrays x and y"
        ) from exc
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 64)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(0)
    train: list[int] = []
    test: list[int] = []
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(y == label))
        half = len(indices) // 2
        train += indices[:half].tolist()
        test += indices[half:].tolist()
    train.sort()
    test.sort()
    return Dataset("sklearn:digits", x[train], y[train], x[test], y[test])


def load(spec: str) -> Dataset:
    """``sklearn:digits``, or an ``.npz`` with ``x`` (samples, model input shape without the
    batch axis) and ``y`` (integer labels); all of an .npz is held-out data.

    Raises:
        BadRequestError: unknown dataset, unreadable file, or mismatched arrays.
    """
    if spec == "sklearn:digits":
        return digits()
    if spec.startswith("sklearn:"):
        raise BadRequestError(f"unknown dataset {spec!r}; shipped: sklearn:digits")
    x, y = samples(spec, part="test")
    if y is None or not len(y):
        raise BadRequestError(f"{spec}: evaluation needs labels: an array y beside x")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadRequestError(f"{spec}: labels y must be integers, not {y.dtype}")
    empty = np.empty((0, *x.shape[1:]), dtype=x.dtype)
    return Dataset(spec, empty, np.empty(0, dtype=np.int64), x, y.astype(np.int64))


def samples(spec: str, *, part: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples and labels (None when the data has none): ``sklearn:digits`` gives its
    ``part`` ("train" for calibration, "test" for evaluation); an ``.npz`` gives its ``x``
    and, if present, ``y``.

    Raises:
        BadRequestError: unknown dataset, unreadable file, or mismatched arrays.
    """
    if spec.startswith("sklearn:"):
        if spec != "sklearn:digits":
            raise BadRequestError(f"unknown dataset {spec!r}; shipped: sklearn:digits")
        data = digits()
        return (data.train_x, data.train_y) if part == "train" else (data.test_x, data.test_y)
    path = Path(spec)
    try:
        with np.load(path, allow_pickle=False) as archive:
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise BadRequestError(f"cannot read {path} as an .npz with an array x: {exc}") from exc
    if x.ndim < 2:
        raise BadRequestError(f"{path}: x {x.shape} must be (samples, ...input shape)")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise BadRequestError(f"{path}: y {y.shape} must have one label per sample of x")
    return x, y
