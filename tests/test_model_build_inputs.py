"""`edgefleet model build` on inputs as they come (issue 24 item 1): a real float image
classifier without a signature (the Coral MobileNet dequantized by
scripts/make_float_classifier.py), calibrated and evaluated on a folder of images with a
labels.csv, and clear refusals for data it cannot read."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import pytest
from PIL import Image

from agent.inference.modelfile import inspect_model_file
from fleet_server.admin_cli.optimize import build_data
from fleet_server.errors import BadRequestError
from fleet_server.optimize.build import BuildReport
from fleet_server.optimize.images import load_images
from tests.harness import DATA, run_cli

LABELS = DATA / "imagenet_labels.txt"


def image_folder(folder: Path, labels: str | None = None) -> Path:
    """cat.bmp, bird.bmp, a grey digit and a JPEG of the cat, a README that is no image."""
    folder.mkdir(parents=True)
    for name in ("cat.bmp", "bird.bmp", "mnist_nine.bmp"):
        (folder / name).write_bytes((DATA / name).read_bytes())
    with Image.open(DATA / "cat.bmp") as cat:
        cat.convert("RGB").save(folder / "cat2.jpg", quality=90)
    (folder / "README.txt").write_text("not an image\n")
    if labels is not None:
        (folder / "labels.csv").write_text(labels)
    return folder


def test_the_fixture_is_a_float_model_without_a_signature(float_classifier: Path) -> None:
    info = inspect_model_file(float_classifier)
    assert info.signatures == () and info.quantization == "float32"
    assert info.inputs[0].dtype == "float32" and info.inputs[0].shape == (1, 128, 128, 3)


@pytest.mark.slow
def test_a_signature_less_image_model_builds_from_a_folder_of_images(
    float_classifier: Path, tmp_path: Path
) -> None:
    images = image_folder(
        tmp_path / "images",
        "file,label\ncat.bmp,tiger cat\ncat2.jpg,283\nbird.bmp,chickadee\nmnist_nine.bmp,20\n",
    )
    out = tmp_path / "out"
    result = run_cli(
        "edgefleet", "model", "build", str(float_classifier), "--calibration", str(images),
        "--eval", str(images), "--labels", str(LABELS), "--out", str(out), timeout=600,
    )  # fmt: skip
    report = BuildReport.from_json((out / "report.json").read_text())
    by_name = {v.name: v for v in report.variants}
    assert report.samples_calibration == report.samples_eval == 4 and report.labelled
    for name in ("float32", "float16", "dynamic-int8", "weight-only-int8", "int8", "int16x8"):
        assert by_name[name].status == "ok", (name, by_name[name].reason)
    # The float model's own answers: the bird right, the digit wrong (it is no ImageNet class).
    assert by_name["float32"].accuracy is not None and 0.25 <= by_name["float32"].accuracy < 1
    assert by_name["int8"].top1_agreement == 1.0
    assert any("no signature: quantized with serving_default added" in n for n in report.notes)
    assert any("4 images, labelled; 1 files that are not images skipped" in n for n in report.notes)
    assert "note: evaluation:" in result.stdout
    # float32 is the source itself; the quantized variants carry the signature they were fed by.
    digest = hashlib.sha256(float_classifier.read_bytes()).hexdigest()
    assert hashlib.sha256((out / "float32.tflite").read_bytes()).hexdigest() == digest
    assert inspect_model_file(out / "int8.tflite").signatures[0].key == "serving_default"
    assert not list(out.glob(".*"))


def args_for(model: Path, labels: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(model=model, labels=labels, max_images=1000)


def test_images_are_resized_and_normalized_as_predict_does(
    float_classifier: Path, tmp_path: Path
) -> None:
    folder = image_folder(tmp_path / "images")
    found = load_images(folder, float_classifier, limit=3)
    assert found.x.shape == (3, 128, 128, 3) and found.x.dtype.name == "float32"
    assert -1.0 <= found.x.min() < 0 < found.x.max() <= 1.0  # (p - 127.5) / 127.5
    assert found.files == ("bird.bmp", "cat.bmp", "cat2.jpg") and found.left_out == 1
    assert found.y is None and found.skipped == 1


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: None, "holds no image"),
        (lambda f: (f / "x.png").write_bytes(b"not a png"), "x.png"),
        (lambda f: image_folder(f / "sub") and None, "holds no image"),
    ],
)
def test_folders_without_usable_images_are_refused_by_name(
    float_classifier: Path, tmp_path: Path, setup: object, message: str
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    assert callable(setup)
    setup(folder)
    with pytest.raises(BadRequestError, match=message):
        build_data(str(folder), args_for(float_classifier), "train", [])


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [
        ("cat.bmp,tiger cat\n", None, "unknown class 'tiger cat' (class names need --labels"),
        ("cat.bmp,no such class\n", LABELS, "unknown class 'no such class'"),
        ("cat.bmp,283\n", None, "labels 1 of 4 images; no label for bird.bmp"),
        ("cat.bmp,283,extra\n", None, "expected file,label, got 3 fields"),
        ("ghost.bmp,1\n", None, "names files that are not in"),
    ],
)
def test_labels_that_do_not_fit_the_images_are_refused_with_the_line(
    float_classifier: Path, tmp_path: Path, rows: str, labels: Path | None, message: str
) -> None:
    folder = image_folder(tmp_path / "images", rows)
    with pytest.raises(BadRequestError, match=re.escape(message)):
        build_data(str(folder), args_for(float_classifier, labels), "test", [])


@pytest.mark.parametrize("name", ["cat.bmp", "calib.csv", "missing.npz.gz"])
def test_a_file_that_is_not_an_npz_is_refused_with_what_is_accepted(
    float_classifier: Path, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    if name == "cat.bmp":
        path.write_bytes((DATA / name).read_bytes())
    with pytest.raises(BadRequestError, match=r"give a folder of images, an \.npz with an array x"):
        build_data(str(path), args_for(float_classifier), "train", [])


def test_a_folder_is_cut_to_the_memory_budget_not_loaded_whole(
    float_classifier: Path, tmp_path: Path
) -> None:
    """Prepared inputs are float32: 1000 images of a 1080p input would take 23 GiB. The
    budget lowers the count (here 2 images' worth), and says how many were left out."""
    folder = image_folder(tmp_path / "images")
    found = load_images(folder, float_classifier, budget_bytes=2 * 128 * 128 * 3 * 4)
    assert found.x.shape[0] == 2 and found.left_out == 2
