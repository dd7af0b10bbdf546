"""Give a signature-less .tflite the signature a converter would have written.

ai-edge-quantizer feeds calibration samples by signature (key, then input name). Many real
float models have none: older converters and hand-built graphs write only the subgraph's
inputs and outputs. This adds ``serving_default`` over the first subgraph, naming each entry
after its tensor (``input_0``, ``output_0`` where a name is empty or repeated).
"""

from __future__ import annotations

from typing import Any

from ai_edge_litert import schema_py_generated as schema

from fleet_server.optimize.flat import dump, load

__all__ = ["SIGNATURE_KEY", "add_signature"]

SIGNATURE_KEY = "serving_default"


def _entries(graph: Any, indices: Any, prefix: str) -> list[Any]:
    names = [graph.tensors[int(i)].name or b"" for i in indices]
    entries = []
    for position, (index, raw) in enumerate(zip(indices, names, strict=True)):
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if not name or names.count(raw) > 1:
            name = f"{prefix}_{position}"
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        entries.append(entry)
    return entries


def add_signature(model: bytes) -> bytes:
    """``model`` with a ``serving_default`` signature over its first subgraph (unchanged
    otherwise); a model that has signatures is returned as it is."""
    m = load(model)
    if m.signatureDefs:
        return model
    graph = m.subgraphs[0]
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = _entries(graph, graph.inputs, "input")
    signature.outputs = _entries(graph, graph.outputs, "output")
    m.signatureDefs = [signature]
    return dump(m)
