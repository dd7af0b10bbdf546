"""What this device has: CPU, memory, disk, runtime. (Edge TPU detection: the inference issue.)"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from agent import __version__
from agent.errors import RuntimeMissingError
from agent.inference.runtime import find_runtime
from protos import device_pb2

__all__ = ["probe"]


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def probe(state_dir: Path) -> device_pb2.Capabilities:
    """Capabilities as reported at enrollment and check-in."""
    try:
        runtime = find_runtime()
        runtime_name, runtime_version = runtime.name, runtime.version
    except RuntimeMissingError:
        runtime_name, runtime_version = "", ""
    try:
        free = shutil.disk_usage(state_dir if state_dir.exists() else state_dir.parent).free
    except OSError:
        free = 0
    return device_pb2.Capabilities(
        arch=platform.machine(),
        cpu_cores=os.cpu_count() or 1,
        memory_bytes=_memory_bytes(),
        disk_free_bytes=free,
        edgetpu_count=0,
        runtime=runtime_name,
        runtime_version=runtime_version,
        agent_version=__version__,
        os=f"{platform.system()} {platform.release()}",
    )
