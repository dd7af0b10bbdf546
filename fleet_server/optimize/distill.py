"""``edgefleet model distill``: a small student trained from a teacher's soft labels.

The teacher (a float ``.tflite``, typically the cloud model) runs with LiteRT on unlabelled
inputs: the training samples and as many synthetic ones made from them (mixtures of two samples
and noisy copies), which is where distillation gains over training on the labels alone: the
teacher labels inputs nobody labelled. The student, a multilayer perceptron of the given hidden
sizes, learns the teacher's output distribution softened by a temperature (Hinton et al. 2015:
KL divergence at temperature T, scaled by T squared), with PyTorch on the CPU; litert-torch then
converts it to a float32 ``.tflite``, which ``model build`` quantizes like any other model.

Students here are perceptrons over flat inputs (a teacher taking ``[1, N]``); an image student
needs an architecture of its own: train it in PyTorch, convert it with litert-torch, and build it
with ``edgefleet model build``. Needs the ``distill`` extra (torch, litert-torch).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleet_server.errors import BadRequestError
from fleet_server.optimize.build import read_model
from fleet_server.routing.evaluate import scores

__all__ = ["LIMITS", "Distilled", "distill", "require_torch"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Limits:
    hidden_layers: int = 4
    hidden_width: int = 4096
    epochs: int = 10_000
    synthetic: int = 200_000
    temperature: float = 20.0
    # inputs x width: what one training pass may hold (synthetic samples included)
    values: int = 64 << 20
    # a student is small: 4 M parameters are 16 MB of float32 (64 MB with Adam's state)
    parameters: int = 4_000_000
    # parameters x samples x epochs: about an hour of training on two cores
    work: float = 5e12


LIMITS = _Limits()


@dataclass(frozen=True)
class Distilled:
    """A converted student and how it was trained."""

    model: bytes  # the float32 .tflite
    hidden: tuple[int, ...]
    layers: tuple[int, ...]  # input width, hidden widths, classes
    samples: int  # real training inputs
    synthetic: int  # inputs made from them, labelled by the teacher
    epochs: int
    temperature: float
    teacher_agreement: float  # top-1 agreement with the teacher on the training inputs
    train_s: float
    convert_s: float
    parameters: int
    teacher_parameters: int
    probabilities: bool  # the teacher (and so the student) outputs a distribution


def require_torch() -> None:
    """Raises BadRequestError when the ``distill`` extra is missing."""
    try:
        import litert_torch  # noqa: F401, PLC0415
        import torch  # noqa: F401, PLC0415
    except ImportError as exc:
        raise BadRequestError(
            f"model distill needs PyTorch and litert-torch ({exc.name} is missing): pip "
            "install 'edgefleet[distill]' (docs/optimize.md: take torch's CPU build)"
        ) from exc


def _check_teacher(teacher: Path, x: np.ndarray) -> tuple[int, int, float]:
    """(inputs, classes, the output's quantization step or 0) of a one-input, one-output
    teacher over flat inputs that ``x`` fits (a quantized teacher gets real values, quantized
    as its input says).

    Raises:
        BadRequestError: anything else.
    """
    info = read_model(teacher)
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        raise BadRequestError(
            f"{teacher.name} has {len(info.inputs)} inputs and {len(info.outputs)} outputs; "
            "a teacher is a classifier with one of each"
        )
    source, sink = info.inputs[0], info.outputs[0]
    if len(source.shape) != 2 or len(sink.shape) != 2:
        raise BadRequestError(
            f"{teacher.name} takes {tuple(source.shape)}: model distill trains perceptron "
            "students over flat inputs [1, N]; for an image model, train a student of your "
            "own in PyTorch, convert it with litert-torch and run 'edgefleet model build'"
        )
    width, classes = int(source.shape[1]), int(sink.shape[1])
    if x.ndim != 2 or x.shape[1] != width:
        raise BadRequestError(f"the training samples are {x.shape[1:]}; {teacher.name} takes "
                              f"({width},)")  # fmt: skip
    if classes < 2:
        raise BadRequestError(f"{teacher.name} gives {classes} output: not a classifier")
    return width, classes, sink.scale


def _synthetic(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Unlabelled inputs made from ``x``: half mixtures of two samples (a uniform weight), half
    copies with Gaussian noise of a tenth of the data's spread; kept within the data's range."""
    if count == 0:
        return np.empty((0, x.shape[1]), dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    spread = (high - low) or 1.0
    mixed = count // 2
    a = x[rng.integers(0, len(x), mixed)]
    b = x[rng.integers(0, len(x), mixed)]
    weight = rng.random((mixed, 1), dtype=np.float32)
    noisy = x[rng.integers(0, len(x), count - mixed)]
    noisy = noisy + rng.normal(0, 0.1 * spread, noisy.shape).astype(np.float32)
    return np.clip(np.concatenate([weight * a + (1 - weight) * b, noisy]), low, high).astype(
        np.float32
    )


def _soft_targets(values: np.ndarray, step: float = 0.0) -> tuple[np.ndarray, bool]:
    """The teacher's outputs as log-probabilities, and whether they were a distribution
    already (non-negative, rows summing to 1) rather than logits. ``step``: the output's
    quantization step; a quantized softmax's rows sum to 1 within half a step per class."""
    sums = values.sum(axis=1)
    tolerance = max(1e-3, 0.5 * step * values.shape[1])
    distribution = bool((values >= 0).all() and np.allclose(sums, 1.0, atol=tolerance))
    if distribution:
        return np.log(np.clip(values, 1e-7, 1.0)), True
    shifted = values - values.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)), False


def distill(
    teacher: Path,
    train_x: np.ndarray,
    *,
    hidden: Sequence[int] = (16,),
    epochs: int = 60,
    temperature: float = 4.0,
    synthetic: int = 20_000,
    seed: int = 0,
    progress: Progress = lambda _text: None,
) -> Distilled:
    """Train and convert a student of ``teacher`` on ``train_x`` (unlabelled).

    Raises:
        BadRequestError: a teacher or data this cannot use, limits exceeded, or the extra
            missing.
    """
    require_torch()
    if not hidden or len(hidden) > LIMITS.hidden_layers:
        raise BadRequestError(f"a student has 1 to {LIMITS.hidden_layers} hidden layers")
    if any(not 1 <= h <= LIMITS.hidden_width for h in hidden):
        raise BadRequestError(f"hidden layer widths are 1 to {LIMITS.hidden_width}: {hidden}")
    if not 1 <= epochs <= LIMITS.epochs:
        raise BadRequestError(f"epochs are 1 to {LIMITS.epochs}, not {epochs}")
    if not 0 < temperature <= LIMITS.temperature:
        raise BadRequestError(f"the temperature is within (0, {LIMITS.temperature:g}]")
    if not 0 <= synthetic <= LIMITS.synthetic:
        raise BadRequestError(f"synthetic samples are 0 to {LIMITS.synthetic:,}")
    if len(train_x) == 0:
        raise BadRequestError("the training data is empty; give a few hundred samples")
    x = np.asarray(train_x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BadRequestError("the training data holds NaN or infinite values")
    width, classes, step = _check_teacher(teacher, x)
    if (len(x) + synthetic) * width > LIMITS.values:
        raise BadRequestError(
            f"{len(x) + synthetic:,} samples of {width} values exceed the training budget of "
            f"{LIMITS.values:,} values: give fewer samples or --synthetic"
        )
    sizes = [width, *hidden, classes]
    parameters = sum(a * b + b for a, b in itertools.pairwise(sizes))
    if parameters > LIMITS.parameters:
        raise BadRequestError(
            f"a {'-'.join(map(str, sizes))} student has {parameters:,} parameters, more than "
            f"{LIMITS.parameters:,}: a student is meant to be small"
        )
    if parameters * (len(x) + synthetic) * epochs > LIMITS.work:
        raise BadRequestError(
            f"{parameters:,} parameters x {len(x) + synthetic:,} samples x {epochs} epochs is "
            f"more training than the {LIMITS.work:.0e} budget (about an hour here): fewer "
            "epochs, samples or hidden units"
        )
    rng = np.random.default_rng(seed)
    inputs = np.concatenate([x, _synthetic(x, synthetic, rng)])
    progress(f"teacher {teacher.name}: labelling {len(inputs):,} inputs")
    labelled = scores(teacher, inputs)
    targets, probabilities = _soft_targets(labelled.values, step)
    started = time.monotonic()
    student = _train(
        inputs, targets, hidden=hidden, classes=classes, epochs=epochs,
        temperature=temperature, seed=seed, progress=progress,
    )  # fmt: skip
    train_s = time.monotonic() - started
    agreement = float((_predict(student, x).argmax(1) == targets[: len(x)].argmax(1)).mean())
    started = time.monotonic()
    model = _convert(student, width, probabilities)
    return Distilled(
        model=model,
        hidden=tuple(hidden),
        layers=tuple(sizes),
        samples=len(x),
        synthetic=synthetic,
        epochs=epochs,
        temperature=temperature,
        teacher_agreement=agreement,
        train_s=train_s,
        convert_s=time.monotonic() - started,
        parameters=parameters,
        teacher_parameters=_parameters(teacher),
        probabilities=probabilities,
    )


def _parameters(model: Path) -> int:
    """Weights and biases stored in the model (constant tensors' elements)."""
    from fleet_server.optimize.flat import load  # noqa: PLC0415

    flat = load(model.read_bytes())
    total = 0
    for subgraph in flat.subgraphs or []:
        for tensor in subgraph.tensors or []:
            buffer = flat.buffers[tensor.buffer] if tensor.buffer else None
            if buffer is not None and buffer.data is not None and len(buffer.data):
                total += int(np.prod(tensor.shape)) if tensor.shape is not None else 0
    return total


def _train(
    x: np.ndarray,
    targets: np.ndarray,
    *,
    hidden: Sequence[int],
    classes: int,
    epochs: int,
    temperature: float,
    seed: int,
    progress: Progress,
) -> Any:
    import torch  # noqa: PLC0415 - the distill extra

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        layers: list[Any] = []
        width = x.shape[1]
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, classes))
        student = torch.nn.Sequential(*layers)
        optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        inputs = torch.from_numpy(np.ascontiguousarray(x))
        soft = torch.softmax(torch.from_numpy(np.ascontiguousarray(targets)) / temperature, 1)
        generator = torch.Generator().manual_seed(seed)
        loss_fn = torch.nn.KLDivLoss(reduction="batchmean")
        for epoch in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            total = 0.0
            for start in range(0, len(inputs), 256):
                batch = order[start : start + 256]
                optimizer.zero_grad()
                log_student = torch.log_softmax(student(inputs[batch]) / temperature, 1)
                loss = loss_fn(log_student, soft[batch]) * temperature * temperature
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            schedule.step()
            if epoch % 10 == 9 or epoch == epochs - 1:
                progress(f"epoch {epoch + 1}/{epochs}: loss {total / len(inputs):.4f}")
        return student.eval()
    finally:
        torch.set_num_threads(threads)


def _predict(student: Any, x: np.ndarray) -> np.ndarray:
    import torch  # noqa: PLC0415

    with torch.no_grad():
        result: np.ndarray = student(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return result


def _convert(student: Any, width: int, probabilities: bool) -> bytes:
    """The student as a float32 .tflite (litert-torch), ending in a softmax when the teacher's
    outputs are a distribution, so that a cascade threshold means the same on both."""
    import litert_torch  # noqa: PLC0415 - the distill extra
    import torch  # noqa: PLC0415

    model = torch.nn.Sequential(student, torch.nn.Softmax(dim=-1)) if probabilities else student
    with (
        contextlib.redirect_stdout(sys.stderr),  # its progress; stdout is for `--json`
        tempfile.TemporaryDirectory(prefix="edgefleet-distill-") as folder,
    ):
        converted = litert_torch.convert(model.eval(), (torch.zeros(1, width),))
        path = Path(folder) / "student.tflite"
        converted.export(str(path))
        return path.read_bytes()
