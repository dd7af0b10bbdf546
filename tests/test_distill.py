"""Knowledge distillation (issue 24 item 3): `edgefleet model distill` trains a 64-16-10 student
from the digits cloud model's soft labels with PyTorch, converts it with litert-torch, builds and
measures its variants with the teacher as the reference, and `models push` takes them with their
technique; the cascade with the distilled student sends fewer requests to the cloud than with the
shipped local model of the same size."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.inference.modelfile import inspect_model_bytes
from fleet_server.errors import BadRequestError
from fleet_server.optimize.build import BuildReport
from fleet_server.optimize.distill import LIMITS, distill
from fleet_server.routing.datasets import digits
from fleet_server.routing.evaluate import scores
from tests.harness import DATA, Server, run_cli

TEACHER = DATA / "digits_cloud_float.tflite"
SHIPPED = DATA / "digits_local_int8.tflite"  # 64-16-10, trained on the labels


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "digits"
    run_cli(
        "edgefleet", "model", "distill", str(TEACHER), "--train", "sklearn:digits",
        "--eval", "sklearn:digits", "--min-accuracy", "90", "--out", str(out), timeout=600,
    )  # fmt: skip
    return out


def cascade(local: Path) -> dict[str, float]:
    """`routing evaluate`'s recommendation for ``local`` in front of the teacher."""
    result = run_cli(
        "edgefleet", "routing", "evaluate", "--local", str(local), "--cloud", str(TEACHER),
        "--data", "sklearn:digits", "--json",
    )  # fmt: skip
    recommended: dict[str, float] = json.loads(result.stdout)["recommended"]
    return recommended


@pytest.mark.slow
def test_a_distilled_student_is_built_measured_and_cheaper_in_the_cascade(
    distilled: Path,
) -> None:
    report = BuildReport.from_json((distilled / "report.json").read_text())
    rows = {v.name: v for v in report.variants}
    teacher, student, int8 = rows["teacher"], rows["distilled-float32"], rows["distilled-int8"]
    assert teacher.status == "reference" and not teacher.file and teacher.technique == ""
    assert {"distilled-float16", "distilled-int16x8", "distilled-int8-uint8io"} <= set(rows)
    assert all(v.technique == "distilled" for v in report.variants if v is not teacher)
    layers = inspect_model_bytes((distilled / student.file).read_bytes())
    assert [tuple(t.shape) for t in layers.inputs] == [(1, 64)]
    assert [tuple(t.shape) for t in layers.outputs] == [(1, 10)]
    assert student.size < teacher.size / 50  # 1,210 parameters against 167,178
    assert int8.status == "ok" and int8.size_ratio < 0.01  # to the teacher's size
    assert int8.accuracy is not None and int8.accuracy >= 0.9
    assert int8.top1_agreement is not None and int8.top1_agreement > 0.93  # with the teacher
    assert any("64-16-10 perceptron" in note for note in report.notes), report.notes
    # The same cascade at the same accuracy budget (1 point under cloud only): the student's
    # better-calibrated scores leave fewer requests for the cloud, so a million cost less.
    before, after = cascade(SHIPPED), cascade(distilled / int8.file)
    assert after["cost_per_million"] < before["cost_per_million"], (before, after)
    assert after["cloud_share"] < before["cloud_share"]


def _pair(distilled: Path, folder: Path, dense_ms_ratio: float) -> Path:
    """A build folder with two variants: distilled-int8 as built, and the shipped int8 model
    (no technique, its accuracy measured like the student's) timed ``dense_ms_ratio`` times
    the student's median; without the build's floor (the push gives it)."""
    shutil.copytree(distilled, folder)
    report = BuildReport.from_json((folder / "report.json").read_text())
    report.min_accuracy = None
    rows = {v.name: v for v in report.variants}
    for v in report.variants:
        if v.name not in ("distilled-int8", "teacher"):
            v.status, v.file = "skipped", ""
    student = rows["distilled-int8"]
    shutil.copyfile(SHIPPED, folder / "int8.tflite")
    dense = type(student)(
        "int8", file="int8.tflite", size=SHIPPED.stat().st_size,
        median_ms=student.median_ms * dense_ms_ratio, accuracy=0.9556,
    )  # fmt: skip
    report.variants.append(dense)
    (folder / "report.json").write_text(report.to_json())
    return folder


@pytest.mark.slow
def test_the_fleet_prefers_the_distilled_variant_within_the_floor_and_as_fast(
    distilled: Path, tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    from fleet_server.simulator import SimDevice

    student = {v.name: v for v in BuildReport.from_json(
        (distilled / "report.json").read_text()).variants}["distilled-int8"]  # fmt: skip
    assert student.accuracy is not None and 0.95 < student.accuracy < 0.99
    server = server_factory(None)
    # The dense int8 2 % faster: a tie. The floor comes from the push (95 %).
    server.admin(
        "models", "push", str(_pair(distilled, tmp_path / "tie", 0.98)), "--name", "digits",
        "--version", "1.0.0", "--accuracy-floor", "95",
    )  # fmt: skip
    # Without a floor the fastest wins, as before.
    server.admin(
        "models", "push", str(_pair(distilled, tmp_path / "nofloor", 0.98)), "--name",
        "digits", "--version", "1.1.0",
    )  # fmt: skip
    # A floor above both: nothing fits, the cloud answers.
    server.admin(
        "models", "push", str(_pair(distilled, tmp_path / "high", 0.98)), "--name", "digits",
        "--version", "1.2.0", "--accuracy-floor", "99.5",
    )  # fmt: skip
    listed = json.loads(server.admin("models", "list", "--json").stdout)
    profile = next(m for m in listed if m["variant"] == "distilled-int8")["profile"]
    assert profile["technique"] == "distilled" and profile["accuracy_floor"] == 0.95
    assert "distilled" in server.admin("models", "list").stdout

    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "host-1")
    device.close()

    def explain(version: str) -> str:
        return server.admin(
            "devices", "explain", "host-1", "digits", "--model-version", version
        ).stdout

    tie = explain("1.0.0")
    assert "gets digits 1.0.0: distilled-int8" in tie, tie
    assert "within the floor 0.950" in tie
    assert "gets digits 1.1.0: int8" in explain("1.1.0")
    high = explain("1.2.0")
    assert "the cloud" in high and "under the floor 0.995" in high, high


@pytest.mark.slow
def test_the_cli_refuses_what_it_cannot_distill_before_training(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    cases = [
        (["--train", str(tmp_path / "images")], "is a folder"),
        (["--train", "sklearn:digits", "--hidden", "16,x"], "whole numbers"),
        (["--train", str(tmp_path / "missing.npz")], "No such file"),
    ]
    for extra, message in cases:
        result = run_cli(
            "edgefleet", "model", "distill", str(TEACHER), "--out", str(tmp_path / "out"),
            *extra, check=False,
        )  # fmt: skip
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr)
    (tmp_path / "out").mkdir()
    result = run_cli(
        "edgefleet", "model", "distill", str(TEACHER), "--out", str(tmp_path / "out"),
        "--train", "sklearn:digits", check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "--force" in result.stderr


X = digits().train_x


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden": ()}, "1 to 4 hidden layers"),
        ({"hidden": (16,) * (LIMITS.hidden_layers + 1)}, "hidden layers"),
        ({"hidden": (0,)}, "widths are 1 to"),
        ({"epochs": 0}, "epochs are 1 to"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"synthetic": LIMITS.synthetic + 1}, "synthetic samples"),
        ({"hidden": (4096, 4096, 4096)}, "meant to be small"),
        ({"hidden": (2048, 1024), "epochs": 10_000}, "budget"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        distill(TEACHER, X, **kwargs)  # type: ignore[arg-type]


def test_bad_data_and_teachers_are_refused(float_classifier: Path, tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="empty"):
        distill(TEACHER, X[:0])
    with pytest.raises(BadRequestError, match="NaN"):
        distill(TEACHER, np.where(X > 0.5, np.nan, X))
    with pytest.raises(BadRequestError, match=r"takes \(64,\)"):
        distill(TEACHER, X[:, :32])
    with pytest.raises(BadRequestError, match="flat inputs"):
        distill(float_classifier, X)
    with pytest.raises(BadRequestError, match="does not exist"):
        distill(tmp_path / "none.tflite", X)
    (tmp_path / "junk.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(BadRequestError, match="not a TFLite model"):
        distill(tmp_path / "junk.tflite", X)
    with pytest.raises(BadRequestError, match="training budget"):
        distill(TEACHER, np.zeros((LIMITS.values // 64, 64), np.float32), synthetic=1)


def test_without_the_extra_the_message_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(BadRequestError, match=r"edgefleet\[distill\]"):
        distill(TEACHER, X)


def test_a_quantized_teachers_probabilities_are_a_distribution(tmp_path: Path) -> None:
    """The int8 digits model ends in a quantized softmax: its dequantized rows sum to 1 only
    within the output's step (1/256 each), which is still a distribution, not logits; the
    student then ends in a softmax too, so that a cascade threshold means the same on both."""
    result = distill(SHIPPED, X, epochs=20, synthetic=2000)
    assert result.probabilities
    (tmp_path / "student.tflite").write_bytes(result.model)
    sums = scores(tmp_path / "student.tflite", X[:50]).values.sum(axis=1)
    assert np.allclose(sums, 1.0, atol=1e-4), sums


@pytest.mark.slow
def test_a_hand_edited_report_is_refused_with_what_and_where(
    distilled: Path, tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(None)

    def push(folder: Path, edit: Callable[[dict[str, Any]], None]) -> str:
        shutil.copytree(distilled, folder)
        raw = json.loads((folder / "report.json").read_text())
        edit(raw)
        (folder / "report.json").write_text(json.dumps(raw))
        result = server.admin(
            "models", "push", str(folder), "--name", "digits", "--version", "1.0.0", check=False
        )
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr

    def floor_as_text(raw: dict[str, Any]) -> None:
        raw["min_accuracy"] = "0.9"

    assert "min_accuracy" in push(tmp_path / "floor", floor_as_text)

    def technique(raw: dict[str, Any]) -> None:
        raw["variants"][2]["technique"] = "quantum"  # distilled-float16, not the first

    def no_technique(raw: dict[str, Any]) -> None:
        raw["variants"][2]["technique"] = 7

    message = push(tmp_path / "technique", technique)
    assert "distilled-float16" in message and "'quantum'" in message, message
    message = push(tmp_path / "none", no_technique)
    assert "distilled-float16" in message and "technique" in message, message


def test_force_replaces_an_output_folder_never_a_file(tmp_path: Path) -> None:
    """`--out` naming a file (the teacher itself, by a slip) is refused even with --force: the
    file was renamed aside and left behind as .NAME.old-PID, with the folder in its place."""
    from fleet_server.optimize.build import build

    teacher = tmp_path / "teacher.tflite"
    shutil.copyfile(TEACHER, teacher)
    with pytest.raises(BadRequestError, match="not a folder"):
        build(teacher, calibration=X[:8], out=teacher, force=True, technique="distilled")
    assert teacher.read_bytes() == TEACHER.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.tflite"]
