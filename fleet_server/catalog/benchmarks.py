"""Device benchmarks: the latest result per device and variant, and the fleet's view of them.

Each result also updates what selection knows: the variant's median p50 over the devices of a
hardware class becomes its measured latency for that class (``fleet_latency_ms``, which takes
precedence over a build host's measurement of the same class) once ``MIN_DEVICES`` devices
the server sent the file to have reported it: no one device steers its class.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fleet_server.errors import BadRequestError, NotFoundError
from fleet_server.storage.db import Database, bump_generation, stored_text
from fleet_server.storage.schema import benchmarks, deliveries, models

__all__ = ["MIN_DEVICES", "BenchRow", "BenchStore"]

# Devices of a hardware class whose results make its measured latency: one or two devices (a
# liar among them) cannot move what a whole class is given.
MIN_DEVICES = 3


@dataclass(frozen=True)
class BenchRow:
    version: str
    variant: str
    quantization: str
    hardware_class: str
    backend: str
    devices: int
    p50_ms: float
    p95_ms: float
    throughput_per_s: float
    latest: int
    source: str  # "fleet" or "model build"


class BenchStore:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def delivered(self, device_id: str, sha256: str) -> None:
        """Remember that the server streamed this artifact to this device, whole."""
        now = int(time.time())
        key = (deliveries.c.device_id == device_id) & (deliveries.c.sha256 == sha256)
        with self._engine.begin() as conn:
            if conn.execute(deliveries.update().where(key).values(at=now)).rowcount == 0:
                conn.execute(deliveries.insert().values(device_id=device_id, sha256=sha256, at=now))

    def record(self, device_id: str, hardware_class: str, report: Any) -> None:
        """Keep a device's benchmark (replacing its previous one of the same file). The
        median p50 of a class's devices becomes the variant's measured latency for the class
        once ``MIN_DEVICES`` of them have reported.

        Raises:
            NotFoundError: the file is not a variant in the catalog.
            BadRequestError: numbers out of range, or the server never sent the file to the
                device (a device claiming an install it did not do).
        """
        if not (0 < report.p50_ms < 1e7 and 0 < report.p95_ms < 1e7 and report.requests > 0):
            raise BadRequestError("benchmark latencies and request count must be positive")
        now = int(time.time())
        # As stored, and the same everywhere below (the median is taken over stored rows).
        hardware_class = stored_text(hardware_class, 64)
        values = {
            "model_name": report.model_name[:64],
            "version": report.version[:32],
            "hardware_class": hardware_class,
            "backend": stored_text(report.backend, 16),
            "threads": int(report.threads),
            "requests": int(report.requests),
            "p50_ms": float(report.p50_ms),
            "p95_ms": float(report.p95_ms),
            "throughput_per_s": float(report.throughput_per_s),
            "runtime": stored_text(report.runtime, 64),
            "at": now,
        }
        key = (benchmarks.c.device_id == device_id) & (benchmarks.c.sha256 == report.sha256)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(models.c.model_name, models.c.requirements).where(
                    models.c.sha256 == report.sha256
                )
            ).first()
            if row is None or row[0] != report.model_name:
                raise NotFoundError(f"{report.model_name}: no variant with that file")
            sent = conn.execute(
                sa.select(deliveries.c.at).where(
                    (deliveries.c.device_id == device_id) & (deliveries.c.sha256 == report.sha256)
                )
            ).first()
            if sent is None:
                raise BadRequestError(
                    f"{report.sha256[:12]}... was never sent to this device: only the files it "
                    "downloaded count for its hardware class"
                )
            if conn.execute(benchmarks.update().where(key).values(values)).rowcount == 0:
                conn.execute(
                    benchmarks.insert().values(device_id=device_id, sha256=report.sha256, **values)
                )
            p50s = [
                float(r[0])
                for r in conn.execute(
                    sa.select(benchmarks.c.p50_ms).where(
                        (benchmarks.c.sha256 == report.sha256)
                        & (benchmarks.c.hardware_class == hardware_class)
                    )
                )
            ]
            requirements = json.loads(row[1] or "{}")
            fleet = dict(requirements.get("fleet_latency_ms", {}))
            if len(p50s) >= MIN_DEVICES:
                fleet[hardware_class] = statistics.median(p50s)
            else:
                fleet.pop(hardware_class, None)  # the build host's measurement stands
            requirements["fleet_latency_ms"] = fleet
            conn.execute(
                models.update()
                .where(models.c.sha256 == report.sha256)
                .values(requirements=json.dumps(requirements, sort_keys=True))
            )
            bump_generation(conn)  # selection may now prefer another variant

    def report(self, model_name: str) -> list[BenchRow]:
        """Per version, variant and hardware class: the fleet's results, and the build
        host's measurements pushed with the variant."""
        with self._engine.connect() as conn:
            variants = {
                r.sha256: r
                for r in conn.execute(
                    sa.select(
                        models.c.sha256,
                        models.c.version,
                        models.c.variant,
                        models.c.quantization,
                        models.c.requirements,
                        models.c.created_at,
                    ).where(models.c.model_name == model_name)
                )
            }
            results = (
                conn.execute(sa.select(benchmarks).where(benchmarks.c.model_name == model_name))
                .mappings()
                .all()
            )
        if not variants:
            raise NotFoundError(f"no model named {model_name!r} in the catalog")
        groups: dict[tuple[str, str, str], list[Any]] = {}
        for r in results:
            if r["sha256"] in variants:
                groups.setdefault((r["sha256"], r["hardware_class"], r["backend"]), []).append(r)
        rows = []
        for (sha, klass, backend), members in groups.items():
            v = variants[sha]
            rows.append(
                BenchRow(
                    version=v.version,
                    variant=v.variant,
                    quantization=v.quantization,
                    hardware_class=klass,
                    backend=backend,
                    devices=len(members),
                    p50_ms=statistics.median(m["p50_ms"] for m in members),
                    p95_ms=statistics.median(m["p95_ms"] for m in members),
                    throughput_per_s=statistics.median(m["throughput_per_s"] for m in members),
                    latest=max(int(m["at"]) for m in members),
                    source="fleet",
                )
            )
        for v in variants.values():
            for klass, ms in json.loads(v.requirements or "{}").get("latency_ms", {}).items():
                rows.append(
                    BenchRow(
                        v.version,
                        v.variant,
                        v.quantization,
                        klass,
                        "cpu",
                        0,
                        float(ms),
                        0.0,
                        0.0,
                        int(v.created_at),
                        "model build",
                    )
                )
        return sorted(rows, key=lambda r: (r.version, r.hardware_class, r.p50_ms))
