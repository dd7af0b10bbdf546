"""`edgefleet model build` on real models and real data: every variant, the report, the
accuracy floor, and bad input that leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fleet_server.errors import BadRequestError
from fleet_server.optimize import build as build_module
from fleet_server.optimize.build import BuildReport, build
from fleet_server.routing.datasets import digits
from tests.harness import Server, run_cli

DATA = Path(__file__).parent / "data"
FLOAT = DATA / "digits_cloud_float.tflite"
VARIANTS = ["float32", "float16", "dynamic-int8", "weight-only-int8", "int8", "int16x8"]
VARIANTS += ["int8-uint8io"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_build_makes_every_variant_measures_it_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    result = run_cli(
        "edgefleet", "model", "build", str(FLOAT), "--calibration", "sklearn:digits",
        "--eval", "sklearn:digits", "--out", str(out), "--max-accuracy-drop", "1",
        timeout=600,
    )  # fmt: skip
    report = BuildReport.from_json((out / "report.json").read_text())
    by_name = {v.name: v for v in report.variants}
    assert list(by_name) == [*VARIANTS, "edgetpu"]
    for name in VARIANTS:
        variant = by_name[name]
        assert variant.status == "ok", (name, variant.reason)
        assert (out / variant.file).stat().st_size == variant.size
        assert variant.median_ms > 0 and variant.p95_ms >= variant.median_ms
        assert variant.accuracy is not None and variant.top1_agreement is not None
    base, full = by_name["float32"], by_name["int8"]
    assert base.size == FLOAT.stat().st_size and base.accuracy is not None
    # The target, on this model and data (docs/benchmarks.md has every row):
    assert full.size_ratio <= 0.30
    assert full.accuracy is not None and base.accuracy - full.accuracy <= 0.01
    assert by_name["float16"].size_ratio < 0.6
    # uint8 at both ends changes nothing inside: the same answers as int8.
    assert by_name["int8-uint8io"].accuracy == full.accuracy
    assert by_name["int8-uint8io"].top1_agreement == full.top1_agreement
    assert by_name["edgetpu"].status == "skipped"
    assert "edgetpu_compiler is not on PATH" in by_name["edgetpu"].reason
    assert "int8" in result.stdout and "wrote" in result.stdout
    calibrated = f"[model build] int8: quantizing ({len(digits().train_x)} calibration samples)"
    assert calibrated in result.stderr
    assert (out / "report.txt").read_text().startswith("VARIANT")
    assert leftovers(tmp_path) == []


def test_the_accuracy_floor_rejects_variants_with_the_reason(tmp_path: Path) -> None:
    data = digits()
    report = build(
        FLOAT,
        calibration=data.train_x[:100],
        eval_x=data.test_x[:200],
        eval_y=data.test_y[:200],
        out=tmp_path / "strict",
        min_accuracy=0.999,
    )
    rejected = [v for v in report.variants if v.status == "rejected"]
    assert rejected, [(v.name, v.accuracy) for v in report.variants]
    assert all(v.reason.endswith("< floor 99.90%") for v in rejected)
    shown = json.loads((tmp_path / "strict" / "report.json").read_text())
    assert {v["name"] for v in shown["variants"] if v["status"] == "rejected"} == {
        v.name for v in rejected
    }


def test_a_failing_variant_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = build_module._recipes

    def with_a_broken_one() -> dict[str, tuple[object, bool]]:
        recipes = real()
        recipes["float16"] = ([{"regex": ".*", "operation": "*", "algorithm_key": "nope"}], False)
        return recipes

    monkeypatch.setattr(build_module, "_recipes", with_a_broken_one)
    data = digits()
    report = build(FLOAT, calibration=data.train_x[:50], out=tmp_path / "out")
    by_name = {v.name: v for v in report.variants}
    assert by_name["float16"].status == "failed" and by_name["float16"].reason
    assert not (tmp_path / "out" / "float16.tflite").exists()
    assert by_name["int8"].status == "ok"
    assert (tmp_path / "out" / "int8.tflite").exists()


@pytest.mark.slow
def test_bad_input_is_refused_with_the_fix_and_leaves_nothing(
    tmp_path: Path, color_models: Path
) -> None:
    image_model = color_models / "color_float.tflite"  # 32x32x3 images, not digits
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, x=np.zeros((5, 8, 8), np.float32))
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 64), np.float32))
    taken = tmp_path / "taken"
    taken.mkdir()
    cases = [
        (
            [str(image_model), "--calibration", "sklearn:digits"],
            "calibration samples are (64,); color_float.tflite takes (32, 32, 3)",
        ),
        (
            [str(DATA / "digits_local_int8.tflite"), "--calibration", "sklearn:digits"],
            "already quantized",
        ),
        ([str(FLOAT), "--calibration", str(wrong_shape)], "calibration samples are (8, 8)"),
        ([str(FLOAT), "--calibration", str(empty)], "the calibration data is empty"),
        ([str(tmp_path / "missing.tflite"), "--calibration", "sklearn:digits"], "does not exist"),
        ([str(tmp_path), "--calibration", "sklearn:digits"], "needs TensorFlow"),
        (
            [
                str(FLOAT),
                "--calibration",
                "sklearn:digits",
                "--edgetpu",
                str(DATA / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
            ],
            None,
        ),
    ]
    for args, expected in cases:
        out = tmp_path / "out"
        result = run_cli("edgefleet", "model", "build", *args, "--out", str(out), check=False)
        if expected is None:  # a mismatched Edge TPU file fails that variant only
            report = json.loads((out / "report.json").read_text())
            edgetpu = next(v for v in report["variants"] if v["name"] == "edgetpu")
            assert edgetpu["status"] == "failed"
            assert "not a compilation of this model" in edgetpu["reason"]
            continue
        assert result.returncode == 1, result
        assert expected in result.stderr, result.stderr
        assert not out.exists() and leftovers(tmp_path) == []
    result = run_cli(
        "edgefleet", "model", "build", str(FLOAT), "--calibration", "sklearn:digits",
        "--out", str(taken), check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "exists; choose another --out or pass --force" in (
        result.stderr
    )
    with pytest.raises(BadRequestError, match="cannot write in"):
        build(FLOAT, calibration=digits().train_x[:5], out=Path("/proc/1/nope/out"))


@pytest.mark.slow
def test_a_build_directory_is_pushed_with_its_evidence_and_selection_uses_it(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    from fleet_server.simulator import SimDevice

    data = digits()
    out = tmp_path / "build"
    report = build(
        FLOAT,
        calibration=data.train_x[:200],
        eval_x=data.test_x,
        eval_y=data.test_y,
        out=out,
        min_accuracy=0.97,
    )
    server = server_factory(None)
    pushed = server.admin("models", "push", str(out), "--name", "digits", "--version", "1.0.0")
    assert "not pushed: edgetpu (skipped)" in pushed.stderr
    rows = {
        m["variant"]: m["profile"]
        for m in json.loads(server.admin("models", "list", "--json").stdout)
    }
    accepted = {v.name: v for v in report.variants if v.status == "ok"}
    assert set(rows) == set(accepted)
    for name, req in rows.items():
        assert req["latency_ms"] == {report.hardware_class: pytest.approx(accepted[name].median_ms)}
        assert req["accuracy"] == pytest.approx(accepted[name].accuracy)
        assert req["evidence"].startswith("model build on")
    assert "zstd" in pushed.stdout or all("transport_size" not in r for r in rows.values())

    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "measured-1")
    device.close()
    explained = server.admin(
        "devices", "explain", "measured-1", "digits", "--model-version", "1.0.0"
    ).stdout
    fastest = min(accepted.values(), key=lambda v: v.median_ms)
    assert f"fastest measured on {report.hardware_class}: {fastest.median_ms:.4f} ms" in explained
    assert f"gets digits 1.0.0: {fastest.name}" in explained


@pytest.mark.slow
def test_the_fleet_benchmarks_a_model_and_selection_follows_it(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    from tests.harness import make_agent, wait_for

    data = digits()
    out = tmp_path / "build"
    run_cli(
        "edgefleet", "model", "build", str(FLOAT), "--calibration", "sklearn:digits",
        "--eval", "sklearn:digits", "--out", str(out), timeout=600,
    )  # fmt: skip
    del data
    server = server_factory(None)
    server.admin("models", "push", str(out), "--name", "digits", "--version", "1.0.0", "--deploy")
    agent = make_agent(tmp_path, "bench-1", server).start()
    try:

        def ready() -> bool:
            (device,) = server.devices()
            installed = any(m["state"] == "INSTALLED" for m in device.get("models", []))
            return installed and device.get("online_state") == "online"

        wait_for("the agent to install digits and come online", ready, timeout=60)
        asked = server.admin("models", "bench", "digits").stdout
        assert "asked 1 device(s) to benchmark digits: bench-1" in asked

        def fleet_row() -> dict[str, object] | None:
            rows = json.loads(server.admin("models", "bench-report", "digits", "--json").stdout)
            return next((r for r in rows.get("rows", []) if r["source"] == "fleet"), None)

        row = wait_for("the device's benchmark", fleet_row, timeout=60)
        assert row["devices"] == 1 and float(row["p50_ms"]) > 0  # type: ignore[arg-type]
        # One device is not its class: selection keeps the build host's measurement until
        # MIN_DEVICES devices the server sent the file to have reported it
        # (tests/test_bench_store.py).
        models = json.loads(server.admin("models", "list", "--json").stdout)
        benched = next(m for m in models if m["variant"] == row["variant"])
        assert not benched["profile"].get("fleet_latency_ms")
        explained = server.admin(
            "devices", "explain", "bench-1", "digits", "--model-version", "1.0.0"
        ).stdout
        assert "fastest measured on" in explained
        table = server.admin("models", "bench-report", "digits").stdout
        assert "fleet" in table and "model build" in table
        refused = server.admin("models", "bench", "nosuch", check=False)
        assert refused.returncode == 1 and "no model named 'nosuch'" in refused.stderr
    finally:
        agent.stop()
