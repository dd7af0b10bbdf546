"""Compute a pushed model's smoke-test expectation by running it here, on the server's CPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError, InputError
from agent.inference.engine import load_model
from agent.inference.modelfile import ModelInfo
from agent.updates.smoke import DEFAULT_TOLERANCE, fingerprint, random_sample, split_sample
from fleet_server.errors import BadRequestError

__all__ = ["SmokeExpectation", "expect"]

log = logging.getLogger(__name__)
MAX_SAMPLE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class SmokeExpectation:
    """The sample and what the model answered for it."""

    sample: bytes
    indices: list[int]
    scores: list[float]
    tolerance: float


def expect(
    info: ModelInfo,
    runnable: Path | None,
    sample: bytes,
    tolerance: float,
) -> SmokeExpectation:
    """Check or make the sample, and record the model's answer on ``runnable``.

    ``runnable`` is the file the server can run (the model, or the CPU fallback of an Edge TPU
    model); without one, the device only checks that the model runs on the sample.

    Raises:
        BadRequestError: a sample of the wrong size, a bad tolerance, or a model that fails.
    """
    if not 0 <= tolerance <= 1:
        raise BadRequestError(f"smoke tolerance {tolerance} is outside 0..1")
    if len(sample) > MAX_SAMPLE_BYTES:
        raise BadRequestError(f"sample is {len(sample)} bytes; the limit is {MAX_SAMPLE_BYTES}")
    data = sample or random_sample(info)
    try:
        inputs = split_sample(info, data)
    except InputError as exc:
        raise BadRequestError(f"rejected the sample: {exc}") from exc
    if runnable is None:
        return SmokeExpectation(data, [], [], tolerance or DEFAULT_TOLERANCE)
    try:
        model = load_model(runnable, "push", "check", workers=1)
        output = model.infer(inputs, record=False)[0]
    except AgentError as exc:
        raise BadRequestError(f"rejected: the model does not run on its sample: {exc}") from exc
    indices, scores = fingerprint(output, model.info.outputs[0])
    return SmokeExpectation(data, indices, scores, tolerance or DEFAULT_TOLERANCE)
