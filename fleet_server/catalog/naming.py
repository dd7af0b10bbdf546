"""Variant names: one scheme for `edgefleet models push` and `edgefleet model build`.

A variant pushed without a name is named after its kind (what the file computes, from
``ModelInfo.quantization``); `model build` writes its variants under the same names, with
``weight-only-int8`` for the weight-only recipe (the kind of a dynamic-range variant too),
``int8-uint8io`` for full int8 with uint8 inputs and outputs, and a technique's prefix
(``pruned50-int8``, ``distilled-int8``).
"""

from __future__ import annotations

__all__ = ["KIND_NAMES", "TECHNIQUES", "variant_name"]

# Beside the quantization kind: how a variant was made smaller ("" for neither). `model build`
# names pruned variants pruned{P}-{name} and distilled ones distilled-{name}; the technique
# travels as evidence, and selection may prefer such a variant within the accuracy floor.
TECHNIQUES = ("", "pruned", "distilled")

KIND_NAMES = {
    "edgetpu": "edgetpu",
    "full_int8": "int8",
    "int16x8": "int16x8",
    "dynamic_int8": "dynamic-int8",
    "float16": "float16",
    "float32": "float32",
}


def variant_name(kind: str, default: str = "default") -> str:
    """The name a variant of this kind gets when nobody named it."""
    return KIND_NAMES.get(kind, default)
