"""Back-to-back releases: push a new version of a small real model and roll it out to every
device with ``edgefleet rollouts``; now and then a deliberately bad one.

Each version is the same network (tests/data's MobileNet) with another description, so every
release has an artifact of its own. A bad release is pushed as usual and then made to fail
every device's smoke test: its signed manifest is re-signed with a smoke expectation no device
can reproduce (what a broken runtime or accelerator looks like), and the simulated devices are
told to fail it. Its rollout should pause at the failure gate; the driver then rolls it back
(``edgefleet rollouts rollback``), which counts as an expected rollback.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bench.soak.check import RolloutRecord
from bench.soak.fleet import MODEL, Fleet, sha256_file
from fleet_server.signing.keys import KeyStore
from protos import manifest_pb2
from tests.harness import DATA, model_variant

__all__ = ["BASE_MODEL", "ReleaseDriver"]

log = logging.getLogger(__name__)
BASE_MODEL = DATA / "mobilenet_v1_0.25_128_quant.tflite"
_WAVES = ("--waves", "10%,100%", "--failure", "10%", "--no-health-gate", "--json")


def variant(model: bytes, tag: str) -> bytes:
    return model_variant(model, f"EdgeFleet soak release {tag}")


@dataclass
class ReleaseDriver:
    """Pushes releases and drives their rollouts, one at a time, on a thread of its own."""

    fleet: Fleet
    folder: Path
    seed: int
    bad_share: float = 0.25
    rollout_timeout_s: float = 150.0  # database cuts of up to 60 s and server kills slow a rollout
    records: list[RolloutRecord] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # version -> artifact sha256
    sizes: dict[str, int] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)
    good_version: str = ""  # the last good version whose rollout completed (or the first)
    errors: list[str] = field(default_factory=list)
    _minor: int = 0
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed + 1)  # noqa: S311 - reproducible, not crypto
        self._base = BASE_MODEL.read_bytes()
        # init wrote the root keys beside the data dir; a rollback is signed with them.
        self._roots = ("--root-key-dir", str(self.fleet.folder / "server.root-keys"))

    # ---------------------------------------------------------------- releases
    def push(self, *, deploy: bool = False, bad: bool = False) -> str:
        """Push the next version (deploying it fleet-wide with ``deploy``); return it."""
        version = f"1.{self._minor}.0"
        self._minor += 1
        path = self.folder / f"{MODEL}-{version}.tflite"
        path.write_bytes(variant(self._base, version))
        self.hashes[version] = sha256_file(path)
        self.sizes[version] = path.stat().st_size
        if bad:
            self.bad.add(version)
            self.fleet.fail_versions.add(version)
        self.fleet.admin("models", "push", str(path), "--name", MODEL, "--version", version,
                         *(("--deploy",) if deploy else ()))  # fmt: skip
        if bad:
            self._break_smoke_test(version)
        if deploy:
            self.good_version = version
        return version

    def _break_smoke_test(self, version: str) -> None:
        """Re-sign the release's manifests with a smoke expectation no device reproduces."""
        signer = KeyStore(self.fleet.folder / "server" / "keys").manifest_signer()
        query = "SELECT variant, envelope FROM models WHERE model_name = :n AND version = :v"
        update = ("UPDATE models SET envelope = :e WHERE model_name = :n AND version = :v "
                  "AND variant = :w")  # fmt: skip
        with self.fleet.engine().begin() as conn:
            rows = conn.execute(sa.text(query), {"n": MODEL, "v": version}).all()
            for variant_name, raw in rows:
                envelope = manifest_pb2.Envelope.FromString(bytes(raw))
                manifest = manifest_pb2.Manifest.FromString(envelope.payload)
                if manifest.smoke.top_scores:
                    manifest.smoke.top_scores[0] += 0.5
                signed = signer.sign(manifest).SerializeToString()
                params = {"e": signed, "n": MODEL, "v": version, "w": variant_name}
                conn.execute(sa.text(update), params)

    @property
    def largest_artifact(self) -> int:
        return max(self.sizes.values(), default=0)

    # ---------------------------------------------------------------- rollouts
    def start(self, stop: threading.Event) -> None:
        """Roll out releases back to back until ``stop`` is set (the current one is left to
        ``finish``)."""
        self._thread = threading.Thread(target=self._run, args=(stop,), name="soak-releases",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(self.rollout_timeout_s + 120)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            bad = self._rng.random() < self.bad_share
            try:
                self.roll_out(bad=bad, stop=stop)
            except Exception as exc:  # noqa: BLE001 - recorded, shown in the table's log
                log.warning("release failed: %s", exc)
                self.errors.append(str(exc))
                stop.wait(5)
                self._recover()

    def roll_out(self, *, bad: bool, stop: threading.Event | None = None) -> RolloutRecord:
        """Push a release, roll it out and wait for its end (until ``stop``, then it is left
        running for ``finish``)."""
        version = self.push(bad=bad)
        out = self.fleet.admin("rollouts", "create", MODEL, version, *_WAVES).stdout
        rollout_id = int(json.loads(out)["rollout_id"])
        log.info("rollout %d of %s %s started", rollout_id, version, "(bad)" if bad else "")
        began = time.monotonic()
        record = self._follow(rollout_id, version, bad=bad, began=began, stop=stop)
        self.records.append(record)
        return record

    def finish(self, timeout_s: float) -> None:
        """Follow the last rollout to its end (the fault phase is over)."""
        last = self.records[-1] if self.records else None
        if last is None or last.outcome != "running":
            return
        self.records[-1] = self._follow(
            last.rollout_id,
            last.version,
            bad=last.bad,
            began=time.monotonic() - last.seconds,
            stop=None,
            timeout_s=timeout_s,
        )

    def _follow(
        self,
        rollout_id: int,
        version: str,
        *,
        bad: bool,
        began: float,
        stop: threading.Event | None,
        timeout_s: float | None = None,
    ) -> RolloutRecord:
        deadline = time.monotonic() + (timeout_s or self.rollout_timeout_s)
        state = "running"
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return RolloutRecord(rollout_id, version, bad, "running",
                                     time.monotonic() - began)  # fmt: skip
            state = self.state(rollout_id)
            if state in {"completed", "paused", "aborted", "rolled_back", "superseded"}:
                break
            time.sleep(1.0)
        seconds = time.monotonic() - began
        if state == "running":
            self.fleet.admin("rollouts", "abort", str(rollout_id), check=False)
            return RolloutRecord(rollout_id, version, bad, "aborted (timed out)", seconds)
        if state == "paused" and bad:
            self.fleet.admin("rollouts", "rollback", str(rollout_id), *self._roots)
            return RolloutRecord(rollout_id, version, bad, "rolled-back", seconds)
        if state == "paused":
            # A good release tripped the failure gate: a false rollback, shown by the check.
            self.fleet.admin("rollouts", "rollback", str(rollout_id), *self._roots, check=False)
            return RolloutRecord(rollout_id, version, bad, "paused", seconds)
        if state == "completed" and not bad:
            self.good_version = version
        return RolloutRecord(rollout_id, version, bad, state.replace("_", "-"), seconds)

    def _recover(self) -> None:
        """After a failed step, end the rollout left open (a bad one rolled back, a good one
        aborted) so the next can start."""
        try:
            rows = self.fleet.rows("SELECT rollout_id, version FROM rollouts WHERE state IN "
                                   "('running', 'paused')")  # fmt: skip
            for row in rows:
                verb = "rollback" if row["version"] in self.bad else "abort"
                self.fleet.admin("rollouts", verb, str(row["rollout_id"]), check=False)
        except Exception as exc:  # noqa: BLE001 - the next release reports what still fails
            log.warning("cannot end the open rollout: %s", exc)

    def state(self, rollout_id: int) -> str:
        """A rollout's state, from the server's database."""
        rows = self.fleet.rows("SELECT state FROM rollouts WHERE rollout_id = :i", i=rollout_id)
        return str(rows[0]["state"]) if rows else "missing"
