"""What the server keeps of the capabilities a device reports: bounded, whatever it sends.

A device's capabilities go into every answer about it (the admin API, the dashboard, its
variant selection), so one device that reports 50,000 Edge TPUs or megabytes of strings must
not make `edgefleet devices list` fail for the whole fleet. Beyond any real device's numbers,
lists are cut and strings shortened (and NULs dropped); the server says so in its log.
"""

from __future__ import annotations

import logging

from fleet_server.storage.db import stored_text
from protos import device_pb2

__all__ = ["MAX_EDGETPUS", "MAX_TEMPERATURES", "bounded"]

log = logging.getLogger(__name__)

MAX_EDGETPUS = 16  # a Coral PCIe carrier has 8 at most
MAX_TEMPERATURES = 64  # thermal zones and Edge TPUs
_TEXT = 128  # arch, runtime, versions, os, time zone, Edge TPU device/kind/path/state, zones
_STRINGS = (
    "arch",
    "runtime",
    "runtime_version",
    "agent_version",
    "os",
    "libedgetpu_version",
    "timezone",
)


def bounded(caps: device_pb2.Capabilities, device: str = "") -> device_pb2.Capabilities:
    """``caps`` within the bounds above (the message itself when it already is)."""
    fits = len(caps.edgetpus) <= MAX_EDGETPUS and len(caps.temperatures_c) <= MAX_TEMPERATURES
    if fits:
        texts = [getattr(caps, name) for name in _STRINGS] + list(caps.temperatures_c)
        for tpu in caps.edgetpus:
            texts += (tpu.device, tpu.kind, tpu.path, tpu.state)
        fits = all(len(text) <= _TEXT and "\x00" not in text for text in texts)
    if fits:
        return caps
    log.warning(
        "device %s reported capabilities beyond any device's (%d Edge TPUs, %d temperatures, "
        "%d bytes); keeping them bounded",
        device or "(enrolling)",
        len(caps.edgetpus),
        len(caps.temperatures_c),
        caps.ByteSize(),
    )
    kept = device_pb2.Capabilities()
    kept.CopyFrom(caps)
    for name in _STRINGS:
        setattr(kept, name, stored_text(getattr(caps, name), _TEXT))
    del kept.edgetpus[:]
    for tpu in caps.edgetpus[:MAX_EDGETPUS]:
        kept.edgetpus.add(
            device=stored_text(tpu.device, _TEXT),
            kind=stored_text(tpu.kind, _TEXT),
            path=stored_text(tpu.path, _TEXT),
            state=stored_text(tpu.state, _TEXT),
        )
    kept.temperatures_c.clear()
    for zone in sorted(caps.temperatures_c)[:MAX_TEMPERATURES]:
        kept.temperatures_c[stored_text(zone, _TEXT)] = caps.temperatures_c[zone]
    return kept
