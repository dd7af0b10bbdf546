"""`edgefleet-agent predict`: real models, real images, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.harness import DATA, run_cli

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"
LABELS = DATA / "imagenet_labels.txt"


def predict(*args: str) -> dict[str, Any]:
    result = run_cli("edgefleet-agent", "predict", *args, "--json")
    return dict(json.loads(result.stdout))


def top1(*args: str) -> dict[str, Any]:
    result = predict(*args)
    best = result["top_k"]
    assert isinstance(best, list)
    return dict(best[0])


@pytest.mark.slow
def test_cat_is_classified_as_a_cat() -> None:
    best = top1(str(MOBILENET), str(DATA / "cat.bmp"), "--labels", str(LABELS))
    assert "cat" in str(best["label"])
    assert best["index"] in (281, 282, 283, 284, 285, 286, 287)  # the ImageNet cat classes


@pytest.mark.slow
def test_bird_is_classified_as_a_bird() -> None:
    best = top1(str(MOBILENET), str(DATA / "bird.bmp"), "--labels", str(LABELS))
    # ImageNet 7..24 and 80..100 are birds; index 0 is background.
    assert 7 <= int(best["index"]) <= 24 or 80 <= int(best["index"]) <= 100, best


@pytest.mark.slow
def test_grayscale_rank3_input_digit_nine() -> None:
    best = top1(str(DATA / "keras_lstm_mnist_ptq.tflite"), str(DATA / "mnist_nine.bmp"))
    assert best["index"] == 9


@pytest.mark.slow
def test_top_k_is_sorted_and_json_has_label_index_score() -> None:
    result = predict(str(MOBILENET), str(DATA / "cat.bmp"), "--labels", str(LABELS), "--top-k", "5")
    ranked = result["top_k"]
    assert isinstance(ranked, list) and len(ranked) == 5
    assert all(set(r) == {"label", "index", "score"} for r in ranked)
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 < scores[0] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("colour", "expected"),
    [((200, 30, 30), "red"), ((10, 180, 40), "green"), ((0, 0, 90), "blue")],
)
def test_float_and_int8_input_models_agree_on_the_dominant_colour(
    color_models: Path, tmp_path: Path, colour: tuple[int, int, int], expected: str
) -> None:
    image = tmp_path / "solid.png"
    Image.new("RGB", (50, 37), colour).save(image)  # not the model's size: predict resizes
    labels = str(color_models / "color_labels.txt")
    as_float = top1(str(color_models / "color_float.tflite"), str(image), "--labels", labels)
    as_int8 = top1(str(color_models / "color_int8.tflite"), str(image), "--labels", labels)
    assert as_float["label"] == expected
    assert as_int8["label"] == expected
    assert abs(float(as_float["score"]) - float(as_int8["score"])) < 0.01


def test_preprocessing_follows_each_input_tensor(color_models: Path) -> None:
    from agent.inference.modelfile import inspect_model_file
    from agent.inference.preprocess import image_to_tensor

    image = Image.new("RGB", (10, 10), (255, 128, 0))
    uint8 = image_to_tensor(image, inspect_model_file(MOBILENET).inputs[0])
    assert uint8.dtype == np.uint8 and uint8.shape == (1, 128, 128, 3)
    assert tuple(uint8[0, 0, 0]) == (255, 128, 0)  # raw pixels for this model's [-1, 1] range
    int8 = image_to_tensor(image, inspect_model_file(color_models / "color_int8.tflite").inputs[0])
    assert int8.dtype == np.int8
    assert tuple(int8[0, 0, 0]) == (127, 0, -128)
    as_float = image_to_tensor(
        image, inspect_model_file(color_models / "color_float.tflite").inputs[0]
    )
    assert as_float.dtype == np.float32
    assert as_float[0, 0, 0] == pytest.approx([1.0, 0.0039, -1.0], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "image", "message"),
    [
        ("cat.bmp", "cat.bmp", "not a TFLite model"),
        ("mobilenet_v1_0.25_128_quant_edgetpu.tflite", "cat.bmp", "compiled for the Edge TPU"),
        ("invalid_model_invoking_error.tflite", "cat.bmp", "the runtime cannot load it"),
        ("mobilenet_v1_0.25_128_quant.tflite", "missing.bmp", "does not exist"),
        ("mobilenet_v1_0.25_128_quant.tflite", "imagenet_labels.txt", "not a readable image"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_1(model: str, image: str, message: str) -> None:
    result = run_cli(
        "edgefleet-agent", "predict", str(DATA / model), str(DATA / image), check=False
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgefleet-agent:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_corrupted_model_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tflite"
    data = bytearray(MOBILENET.read_bytes()[:4096])
    broken.write_bytes(bytes(data))
    result = run_cli("edgefleet-agent", "predict", str(broken), str(DATA / "cat.bmp"), check=False)
    assert result.returncode == 1
    assert "edgefleet-agent: error:" in result.stderr
    assert "Traceback" not in result.stderr
