"""Worker processes: more server processes serving the same device port (SO_REUSEPORT), so
check-ins are not bound to one Python process's GIL. The main process starts them with what
they need to serve as it does, restarts one that dies (at most 5 times a minute) and stops them
with itself."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from fleet_server.addresses import bracket, split_host_port
from fleet_server.config import Settings

__all__ = ["WorkerPool", "WorkerPorts"]

log = logging.getLogger("fleet_server")
RESTARTS_PER_MINUTE = 5


@dataclass(frozen=True)
class WorkerPorts:
    """What worker processes need to serve the same device port as the main one."""

    port: int
    device_port: int
    advertise: str
    mqtt_url: str
    device_mqtt_url: str
    cloud_url: str = ""  # the main process's reference cloud service, if it runs one


class WorkerPool:
    """``--workers - 1`` processes beside the main one (none for a worker or one process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []
        self._restarts: list[float] = []
        self._ports: WorkerPorts | None = None

    def __len__(self) -> int:
        return len(self.processes)

    def start(self, ports: WorkerPorts) -> None:
        self._ports = ports
        s = self.settings
        if not s.worker and s.workers > 1:
            self.processes = self._spawn(s.workers - 1)

    def _command(self, ports: WorkerPorts) -> list[str]:
        s = self.settings
        host, _ = split_host_port(s.listen, "--listen")
        device_host, _ = split_host_port(s.device_listen or s.listen, "--device-listen")
        cmd = [
            sys.executable, "-m", "fleet_server.cli", "--log-level", s.log_level, "run",
            "--worker", "--main-pid", str(os.getpid()), "--data-dir", str(s.data_dir),
            "--listen", f"{bracket(host)}:{ports.port}",
            "--device-listen", f"{bracket(device_host)}:{ports.device_port}",
            "--device-advertise", ports.advertise,
        ]  # fmt: skip
        if ports.mqtt_url:
            cmd += ["--mqtt-url", ports.mqtt_url, "--device-mqtt-url", ports.device_mqtt_url]
        if s.db_url:
            cmd += ["--db-url", s.db_url]
        if ports.cloud_url:
            cmd += [
                "--cloud-url", ports.cloud_url,
                "--cloud-token-file", str(s.data_dir / "cloud.token"),
                "--cloud-ca-file", str(s.data_dir / "ca" / "ca.crt"),
            ]  # fmt: skip
        elif s.cloud_url:
            cmd += ["--cloud-url", s.cloud_url]
            if s.cloud_token_file:
                cmd += ["--cloud-token-file", str(s.cloud_token_file)]
            if s.cloud_ca_file:
                cmd += ["--cloud-ca-file", str(s.cloud_ca_file)]
        if s.artifact_mirror:
            cmd += ["--artifact-mirror", s.artifact_mirror]
        if s.artifact_store:  # workers serve downloads and their URLs from the same bucket
            cmd += ["--artifact-store", s.artifact_store, "--s3-region", s.s3_region,
                    "--download-url-lifetime", str(s.download_url_lifetime)]  # fmt: skip
            for flag, value in (
                ("--s3-endpoint", s.s3_endpoint),
                ("--s3-public-endpoint", s.s3_public_endpoint),
                ("--s3-credentials", s.s3_credentials),
                ("--s3-ca-file", s.s3_ca_file),
            ):
                if value:
                    cmd += [flag, str(value)]
        for name in s.tls_name or ():
            cmd += ["--tls-name", name]
        if s.no_bootstrap_token:
            cmd.append("--no-bootstrap-token")
        return cmd

    def _spawn(self, count: int) -> list[subprocess.Popen[bytes]]:
        if self._ports is None:
            return []
        return [subprocess.Popen(self._command(self._ports)) for _ in range(count)]

    def supervise(self) -> None:
        """Restart a worker process that died, at most RESTARTS_PER_MINUTE times a minute
        (then the main process serves without it and says so)."""
        for i, worker in enumerate(self.processes):
            code = worker.poll()
            if code is None:
                continue
            now = time.monotonic()
            self._restarts[:] = [t for t in self._restarts if now - t < 60]
            if len(self._restarts) >= RESTARTS_PER_MINUTE:
                log.error(
                    "worker %d exited %d; not restarted: %d restarts in a minute",
                    worker.pid,
                    code,
                    RESTARTS_PER_MINUTE,
                )
                self.processes.pop(i)
                return
            self._restarts.append(now)
            (replacement,) = self._spawn(1)
            log.warning("worker %d exited %d; started %d", worker.pid, code, replacement.pid)
            self.processes[i] = replacement

    def terminate(self) -> None:
        """Ask every worker to stop (SIGTERM); :meth:`wait` collects them."""
        for worker in self.processes:
            worker.terminate()

    def wait(self) -> None:
        for worker in self.processes:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.processes = []
