"""Read and write a .tflite with the flatbuffers object API, whatever way it stores buffers.

A model may keep its constant data inside the flatbuffer (``Buffer.data``) or, as
ai-edge-quantizer and converters of large models write it, after the flatbuffer, at
``Buffer.offset`` (from the file's start) for ``Buffer.size`` bytes. Packing the object tree
again writes a new flatbuffer only, so :func:`load` moves every such buffer's bytes into
``data`` first; :func:`dump` then writes a self-contained model (under 2 GB).
"""

from __future__ import annotations

from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

__all__ = ["dump", "load"]

_LIMIT = 2**31 - 1  # a flatbuffer's own size limit


def load(model: bytes) -> Any:
    """The model's object tree (``schema.ModelT``), every buffer's bytes in ``data``.

    Raises:
        ValueError: a buffer's offset and size point outside the file.
    """
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    for index, buffer in enumerate(m.buffers or []):
        offset, size = int(buffer.offset or 0), int(buffer.size or 0)
        if offset > 1:  # 0 and 1 mean "no external data"
            if offset + size > len(model):
                raise ValueError(f"buffer {index} points past the end of the model")
            buffer.data = np.frombuffer(model, dtype=np.uint8, count=size, offset=offset)
            buffer.offset = buffer.size = 0
    return m


def dump(m: Any) -> bytes:
    """Serialize a model tree :func:`load` gave (edited or not).

    Raises:
        ValueError: the result would exceed the 2 GB a flatbuffer can hold.
    """
    total = sum(len(b.data) for b in m.buffers or [] if b.data is not None)
    if total > _LIMIT:
        raise ValueError(f"{total} bytes of constants: more than one flatbuffer holds")
    builder = flatbuffers.Builder(total + 65536)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
