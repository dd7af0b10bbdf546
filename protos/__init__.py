"""The contract between the EdgeFleet agent and fleet server.

The ``*.proto`` files here are the source of truth; the ``*_pb2*.py`` modules beside them are
generated from them by ``scripts/gen_protos.py`` (a test fails when they are stale). Wire-level
helpers that both sides need live here once: the signing envelope's pre-authentication encoding
(:mod:`protos.envelope`), the MQTT topic layout (:mod:`protos.topics`) and which clear covers
which refused release (:mod:`protos.refusals`).
"""

__all__ = ["envelope", "refusals", "topics"]
