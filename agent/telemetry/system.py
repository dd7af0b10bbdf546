"""System figures for telemetry: CPU, load, memory, disk and temperatures (Linux /proc, /sys)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.hardware.probe import temperatures
from protos import telemetry_pb2

__all__ = ["SystemSampler"]


def _cpu_times(proc: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, or None where /proc/stat is unreadable."""
    try:
        fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def _memory(proc: Path) -> tuple[int, int]:
    """(used, total) bytes: total minus MemAvailable."""
    info: dict[str, int] = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    total = info.get("MemTotal", 0)
    return total - info.get("MemAvailable", total), total


class SystemSampler:
    """Samples the device; CPU use is measured between two samples."""

    def __init__(
        self, state_dir: Path, *, proc: Path = Path("/proc"), sysfs: Path = Path("/sys")
    ) -> None:
        self._state_dir = state_dir
        self._proc = proc
        self._sysfs = sysfs
        self._last = _cpu_times(proc)

    def sample(self) -> telemetry_pb2.SystemTelemetry:
        now = _cpu_times(self._proc)
        cpu = 0.0
        if now is not None and self._last is not None and now[1] > self._last[1]:
            cpu = 100.0 * (now[0] - self._last[0]) / (now[1] - self._last[1])
        self._last = now
        used, total = _memory(self._proc)
        try:
            disk = shutil.disk_usage(self._state_dir)
            free, disk_total = disk.free, disk.total
        except OSError:
            free = disk_total = 0
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        return telemetry_pb2.SystemTelemetry(
            cpu_percent=round(cpu, 1),
            load1=load1,
            memory_used_bytes=used,
            memory_total_bytes=total,
            disk_free_bytes=free,
            disk_total_bytes=disk_total,
            temperatures_c=temperatures(self._sysfs),
        )
