"""Optional checks on a model's inputs before it runs: finite values, and a range.

A model fed NaN answers NaN (or, quantized, whatever the cast makes of it) and a camera app
that sends 0..255 to a model trained on 0..1 gets confident nonsense: neither is an error the
interpreter sees. A ``[validation.MODEL]`` table in the agent's config asks the agent to refuse
such requests with INVALID_ARGUMENT (and count them) instead. Nothing is checked for a model
without one: the checks read every value of every input.

Values are judged in real numbers: a quantized input sent as raw integers is judged by what
those integers stand for (``(q - zero_point) * scale``), one sent as FP32 real values before it
is quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.errors import InputError
from agent.inference.modelfile import TensorInfo

__all__ = ["InputRule", "InvalidInputError"]


class InvalidInputError(InputError):
    """An input the model's validation rule refuses (the request is INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class InputRule:
    """What every input of one model must satisfy."""

    finite: bool = True  # no NaN or infinity in a float input
    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high) or self.low > self.high:
            raise ValueError(f"the range [{self.low}, {self.high}] is empty")

    def check(self, model: str, name: str, array: np.ndarray, tensor: TensorInfo) -> None:
        """Refuse ``array`` (the values given for input ``name``: real numbers when float,
        the tensor's own integers otherwise).

        Raises:
            InvalidInputError: a value is not finite, or outside the range.
        """
        if array.size == 0:
            return
        where = f"input {name!r} of model {model} ([validation.{model}])"
        floating = np.issubdtype(array.dtype, np.floating)
        if floating and self.finite:
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise InvalidInputError(f"{where}: {bad} value(s) are NaN or infinite")
        if self.low == -math.inf and self.high == math.inf:
            return
        values = array[np.isfinite(array)] if floating else array
        if values.size == 0:
            return
        lowest, highest = float(values.min()), float(values.max())
        if not floating and tensor.quantized:  # what the integers stand for
            lowest = (lowest - tensor.zero_point) * tensor.scale
            highest = (highest - tensor.zero_point) * tensor.scale
        if lowest < self.low or highest > self.high:
            raise InvalidInputError(
                f"{where}: values from {lowest:g} to {highest:g} are outside "
                f"[{self.low:g}, {self.high:g}]"
            )
