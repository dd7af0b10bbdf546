"""Health windows (pure verdicts) and the update journal (real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.updates.health import HealthPolicy, judge
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ActiveEntry, ModelStore

POLICY = HealthPolicy(
    window_s=60, min_requests=20, max_error_rate=0.2, max_latency_ratio=3.0, max_starts=3
)


def verdict(**kw: float) -> str:
    values = {
        "elapsed_s": 10.0,
        "starts": 0,
        "requests": 100,
        "errors": 0,
        "p50_ms": 1.0,
        "baseline_p50_ms": 1.0,
    }
    values.update(kw)
    return judge(POLICY, **values).action  # type: ignore[arg-type]


def test_verdicts() -> None:
    assert verdict() == "watch"
    assert verdict(elapsed_s=61) == "pass"
    assert verdict(errors=21) == "rollback"
    assert verdict(errors=20) == "watch"
    assert verdict(p50_ms=3.5) == "rollback"
    assert verdict(p50_ms=3.5, baseline_p50_ms=0) == "watch"  # no baseline: not judged
    assert verdict(requests=19, errors=19, p50_ms=100) == "watch"  # too few to judge
    assert verdict(starts=3) == "rollback"
    assert (
        "crash loop"
        in judge(
            POLICY, elapsed_s=0, starts=3, requests=0, errors=0, p50_ms=0, baseline_p50_ms=0
        ).reason
    )


@settings(max_examples=200, deadline=None)
@given(
    elapsed=st.floats(0, 1000),
    starts=st.integers(0, 10),
    requests=st.integers(0, 1000),
    errors=st.integers(0, 1000),
    p50=st.floats(0, 100),
    baseline=st.floats(0, 100),
)
def test_a_healthy_version_is_never_rolled_back(
    *, elapsed: float, starts: int, requests: int, errors: int, p50: float, baseline: float
) -> None:
    errors = min(errors, requests)
    action = judge(
        POLICY,
        elapsed_s=elapsed,
        starts=starts,
        requests=requests,
        errors=errors,
        p50_ms=p50,
        baseline_p50_ms=baseline,
    ).action
    healthy = (
        starts < 3
        and (requests < 20 or errors / max(requests, 1) <= 0.2)
        and (requests < 20 or baseline <= 0 or p50 <= 3 * baseline)
    )
    assert (action == "rollback") == (not healthy)


def entry(version: str, sha: str) -> ActiveEntry:
    return ActiveEntry(
        version=version,
        release_counter=int(version[0]),
        sha256=sha * 64,
        filename=f"{sha * 64}.tflite",
    )


def test_the_journal_keeps_the_last_known_good_and_refuses_rolled_back_releases(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    life = Lifecycle(store, POLICY, boot="boot-1")
    for e in (entry("1.0.0", "a"), entry("2.0.0", "b")):
        path = store.artifact_path("m", e.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    life.activated("m", entry("1.0.0", "a"))
    assert store.health() == {}  # a first install has nothing to go back to
    life.activated("m", entry("2.0.0", "b"))
    assert store.previous()["m"].version == "1.0.0"
    assert store.health()["m"].crashes == 0
    restored = life.rolled_back("m")
    assert restored is not None and restored.version == "1.0.0"
    # The floor stays at the release rolled back from: release 2 (or 1.5) cannot come back.
    assert store.active()["m"].release_counter == 2
    assert store.active()["m"].version == "1.0.0"
    assert store.refused() == {("m", "b" * 64)}  # this model's refusal, no other's
    assert store.health() == {}
    # Both artifacts are still on disk: the last-known-good is never pruned.
    assert store.artifact_path("m", "a" * 64).exists()


def test_a_foundation_pointer_file_is_read(tmp_path: Path) -> None:
    e = entry("1.0.0", "a")
    (tmp_path / "active.json").write_text(
        json.dumps(
            {
                "format": 1,
                "models": {
                    "m": {
                        "version": e.version,
                        "release_counter": 1,
                        "sha256": e.sha256,
                        "filename": e.filename,
                    }
                },
            }
        )
    )
    store = ModelStore(tmp_path)
    assert store.active()["m"] == e and store.previous() == {}


def test_the_store_keeps_the_configured_number_of_older_versions(tmp_path: Path) -> None:
    import os

    store = ModelStore(tmp_path, keep_versions=3)
    life = Lifecycle(store, POLICY, boot="boot-1")
    entries = [entry(f"{i}.0.0", c) for i, c in zip(range(1, 7), "abcdef", strict=True)]
    for i, e in enumerate(entries):
        path = store.artifact_path("m", e.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))  # older versions have older files
        life.activated("m", e)
        life.passed("m")  # each passed its window: the next one's last-known-good
    kept = sorted(p.stem[0] for p in (tmp_path / "models" / "m").glob("*.tflite"))
    assert kept == ["c", "d", "e", "f"]  # active f, last-known-good e, and two more


def test_a_release_replacing_a_watched_one_keeps_the_trusted_last_known_good(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    life = Lifecycle(store, POLICY, boot="boot-1")
    life.activated("m", entry("1.0.0", "a"))
    life.activated("m", entry("2.0.0", "b"))  # watched
    life.activated("m", entry("3.0.0", "c"))  # replaces 2.0.0 before it proved itself
    assert store.previous()["m"].version == "1.0.0" and "m" in store.health()
    life.activated("m", entry("4.0.0", "c"))  # the same bytes again: the window goes on
    assert store.previous()["m"].version == "1.0.0" and "m" in store.health()
    life.passed("m")
    life.activated("m", entry("5.0.0", "d"))
    assert store.previous()["m"].version == "4.0.0"


def test_clean_restarts_and_reboots_are_not_a_crash_loop(tmp_path: Path) -> None:
    from agent.updates.updater import Updater

    store = ModelStore(tmp_path)
    store.set_active("m", entry("1.0.0", "a"))
    life = Lifecycle(store, POLICY, boot="boot-1")
    life.start()
    life.activated("m", entry("2.0.0", "b"))
    for _ in range(5):  # clean stops (SIGTERM, a start failure): nothing to blame
        life.stop()
        life = Lifecycle(store, POLICY, boot="boot-1")
        assert Updater.recover(life) == []
        life.serving("m")
    for boot in ("boot-2", "boot-3", "boot-4", "boot-5"):  # power cuts: not the model either
        life = Lifecycle(store, POLICY, boot=boot)
        assert Updater.recover(life) == []
        life.serving("m")
    assert store.active()["m"].version == "2.0.0" and store.health()["m"].crashes == 0


def test_deaths_while_a_watched_release_serves_are_a_crash_loop(tmp_path: Path) -> None:
    import hashlib

    from agent.updates.updater import Updater

    store = ModelStore(tmp_path)
    shas = {}
    for version, body in (("1.0.0", b"old"), ("2.0.0", b"new")):
        sha = hashlib.sha256(body).hexdigest()  # a rollback checks the file it goes back to
        store.artifact_path("m", sha).parent.mkdir(parents=True, exist_ok=True)
        store.artifact_path("m", sha).write_bytes(body)
        shas[version] = sha
        store.set_active("m", ActiveEntry(version, int(version[0]), sha, f"{sha}.tflite"))
    life = Lifecycle(store, POLICY, boot="boot-1")
    assert Updater.recover(life) == []
    deaths = 0
    while True:  # each run is killed (no stop) after the model served
        life.serving("m")
        deaths += 1
        life = Lifecycle(store, POLICY, boot="boot-1")
        reports = Updater.recover(life)
        if reports:
            break
        assert store.health()["m"].crashes == deaths
    assert deaths == POLICY.max_starts
    (report,) = reports
    assert report.version == "2.0.0" and "crash loop" in report.detail
    assert store.active()["m"].version == "1.0.0"
    assert store.refused() == {("m", shas["2.0.0"])}


def test_a_death_before_the_watched_model_loaded_is_not_blamed_on_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.set_active("m", entry("1.0.0", "a"))
    store.set_active("m", entry("2.0.0", "b"))
    for _ in range(5):  # killed during start, before any model loaded (a port taken...)
        Lifecycle(store, POLICY, boot="boot-1").start()
    assert store.health()["m"].crashes == 0


def test_falling_back_from_a_damaged_file_keeps_the_floor_for_that_release_only(
    tmp_path: Path,
) -> None:
    from agent.updates.verify import InstalledModel

    store = ModelStore(tmp_path)
    life = Lifecycle(store, POLICY, boot="boot-1")
    for version, counter, sha in (("1.0.0", 1, "a" * 64), ("2.0.0", 2, "b" * 64)):
        store.set_active("m", ActiveEntry(version, counter, sha, f"{sha}.tflite"))
    good = life.rolled_back("m", refuse=False)  # 2.0.0's file was damaged
    assert good is not None and (good.version, good.release_counter) == ("1.0.0", 2)
    assert good.floor_sha256 == "b" * 64 and store.refused() == set()
    # Release 2 may come back, with its own artifact only (verify's same-release rule).
    entry = store.active()["m"]
    assert InstalledModel(entry.release_counter, entry.floor_sha256 or entry.sha256) == (
        InstalledModel(2, "b" * 64)
    )
    # Once the server wants 1.0.0 itself (an explicit rollback from release 3), the floor is
    # that release's own and higher: release 2 can no longer be replayed.
    life.settle_floor("m", 3)
    entry = store.active()["m"]
    assert (entry.release_counter, entry.floor_sha256, entry.sha256) == (3, "", "a" * 64)
    # A rollback that refuses keeps the floor with the refused release too: refused until an
    # operator clears it, and then only that artifact may come back under release 4.
    store.set_active("m", ActiveEntry("4.0.0", 4, "c" * 64, "c.tflite"))
    restored = life.rolled_back("m")
    assert restored is not None and (restored.release_counter, restored.floor_sha256) == (
        4,
        "c" * 64,
    )
    assert ("m", "c" * 64) in store.refused()


def test_a_crash_loop_is_not_rolled_back_onto_a_damaged_last_known_good(tmp_path: Path) -> None:
    import hashlib

    from agent.updates.updater import Updater

    store = ModelStore(tmp_path)
    files = {}
    for version, body in (("1.0.0", b"old model"), ("2.0.0", b"new model")):
        sha = hashlib.sha256(body).hexdigest()
        path = store.artifact_path("m", sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        files[version] = path
        store.set_active("m", ActiveEntry(version, int(version[0]), sha, path.name))
    files["1.0.0"].write_bytes(b"old mode")  # the last-known-good rotted on the card
    for _ in range(POLICY.max_starts + 1):  # a crash loop by the rules: killed while serving
        life = Lifecycle(store, POLICY, boot="boot-1")
        assert Updater.recover(life) == []
        life.serving("m")
    assert store.active()["m"].version == "2.0.0"  # still the one that starts
    files["1.0.0"].write_bytes(b"old model")  # intact again: now it rolls back
    (report,) = Updater.recover(Lifecycle(store, POLICY, boot="boot-1"))
    assert report.version == "2.0.0" and store.active()["m"].version == "1.0.0"


def test_a_journal_written_by_a_newer_agent_is_served_and_never_written(tmp_path: Path) -> None:
    from agent.errors import AgentError

    store = ModelStore(tmp_path)
    store.set_active("m", entry("1.0.0", "a"))
    raw = json.loads((tmp_path / "active.json").read_text())
    raw["format"] = 99
    raw["a_newer_table"] = {}
    (tmp_path / "active.json").write_text(json.dumps(raw))
    life = Lifecycle(store, POLICY, boot="boot-1")
    assert life.start() == []
    life.loading("m", "a" * 64, "1.0.0")
    life.serving("m")
    life.stop()
    assert json.loads((tmp_path / "active.json").read_text()) == raw  # untouched
    assert store.active()["m"].version == "1.0.0"
    try:
        life.activated("m", entry("2.0.0", "b"))
    except AgentError as exc:
        assert "written by a newer agent (format 99" in str(exc)
    else:
        raise AssertionError("a newer journal was written")


@pytest.mark.slow
def test_a_journal_that_cannot_be_written_costs_the_attribution_not_the_serving(
    tmp_path: Path,
) -> None:
    """A full disk, for real: the file size limit (RLIMIT_FSIZE) makes every write fail."""
    import subprocess
    import sys

    store = ModelStore(tmp_path)
    store.set_active("m", entry("1.0.0", "a"))
    store.set_active("m", entry("2.0.0", "b"))
    before = (tmp_path / "active.json").read_text()
    script = f"""
import resource, signal
from pathlib import Path
from agent.updates.health import HealthPolicy
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ModelStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
life = Lifecycle(ModelStore(Path({str(tmp_path)!r})), HealthPolicy(), boot="boot-1")
assert life.start() == []
life.loading("m", "b" * 64, "2.0.0")
life.serving("m")
life.checkpoint()
life.stop()
print("served on")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "served on" in done.stdout, done.stderr
    assert "cannot record this run in the update journal" in done.stderr
    assert (tmp_path / "active.json").read_text() == before
