"""System telemetry from a fake /proc and /sys: CPU between samples, memory, temperatures."""

from __future__ import annotations

from pathlib import Path

from agent.telemetry.system import SystemSampler


def test_cpu_memory_disk_and_temperatures(tmp_path: Path) -> None:
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n")
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("51500\n")
    apex = sysfs / "class" / "apex" / "apex_0"
    apex.mkdir(parents=True)
    (apex / "temp").write_text("47250\n")
    sampler = SystemSampler(tmp_path, proc=proc, sysfs=sysfs)
    # 300 more busy and 100 more idle jiffies: 75% busy since the previous sample.
    (proc / "stat").write_text("cpu  300 0 200 900 0 0 0 0 0 0\n")
    sample = sampler.sample()
    assert sample.cpu_percent == 75.0
    assert (sample.memory_used_bytes, sample.memory_total_bytes) == (600 * 1024, 1000 * 1024)
    assert sample.disk_total_bytes > 0
    assert dict(sample.temperatures_c) == {"cpu-thermal": 51.5, "edgetpu-apex_0": 47.25}
    (proc / "stat").unlink()  # unreadable /proc: zeros, no crash
    assert sampler.sample().cpu_percent == 0.0
