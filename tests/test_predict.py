"""`edgefleet-agent predict`: real models, real images, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.errors import InputError
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
    from agent.inference.preprocess import image_to_tensor, model_normalization

    image = Image.new("RGB", (10, 10), (255, 128, 0))
    mobilenet = inspect_model_file(MOBILENET).inputs[0]
    normalization = model_normalization(MOBILENET, mobilenet)
    # Its TFLite metadata: mean 127.5, std 127.5 (pixels onto [-1, 1]), then stored with the
    # input's scale 1/128 and zero point 128: (p - 127.5) / 127.5 * 128 + 128, rounded.
    assert (normalization.mean, normalization.std, normalization.source) == (
        (127.5,), (127.5,), "metadata")  # fmt: skip
    uint8 = image_to_tensor(image, mobilenet, normalization)
    assert uint8.dtype == np.uint8 and uint8.shape == (1, 128, 128, 3)
    assert tuple(uint8[0, 0, 0]) == (255, 129, 0)
    # No metadata: the default [-1, 1], stored with scale 2/255 (a float32 a hair above it:
    # -1 is -127.49...) and zero point 0.
    int8 = image_to_tensor(image, inspect_model_file(color_models / "color_int8.tflite").inputs[0])
    assert int8.dtype == np.int8
    assert tuple(int8[0, 0, 0]) == (127, 0, -127)
    as_float = image_to_tensor(
        image, inspect_model_file(color_models / "color_float.tflite").inputs[0]
    )
    assert as_float.dtype == np.float32
    assert as_float[0, 0, 0] == pytest.approx([1.0, 0.0039, -1.0], abs=1e-3)


def test_quantized_input_is_normalized_then_quantized_not_stretched_over_its_range(
    color_models: Path,
) -> None:
    # Issue 20: int8 inputs were spread over the calibrated range whatever the model expects.
    # Normalized to [0, 1] (mean 0, std 255) and stored with scale 2/255, zero point 0, white
    # is 127 and black 0; the int8 range's lower half stays unused.
    from agent.inference.metadata import Normalization
    from agent.inference.modelfile import inspect_model_file
    from agent.inference.preprocess import image_to_tensor

    tensor = inspect_model_file(color_models / "color_int8.tflite").inputs[0]
    image = Image.new("RGB", (4, 4), (255, 0, 128))
    data = image_to_tensor(image, tensor, Normalization((0.0,), (255.0,), "flags"))
    assert tuple(data[0, 0, 0]) == (127, 0, 64)
    per_channel = Normalization((0.0, 0.0, 128.0), (255.0, 255.0, 128.0), "flags")
    assert tuple(image_to_tensor(image, tensor, per_channel)[0, 0, 0]) == (127, 0, 0)


def test_a_metadata_normalization_is_read_and_flags_override_it(color_models: Path) -> None:
    from agent.inference.metadata import read_processing
    from agent.inference.modelfile import inspect_model_file
    from agent.inference.preprocess import input_normalization

    model = color_models / "color_float_meta.tflite"
    tensor = inspect_model_file(model).inputs[0]
    found = read_processing(model).input_normalization
    assert [(n.mean, n.std) if n else None for n in found] == [((0.0,), (255.0,))]
    assert read_processing(color_models / "color_float.tflite").input_normalization == (None,)
    chosen = input_normalization(tensor, found[0], mean=(10.0,))
    assert (chosen.mean, chosen.std, chosen.source) == ((10.0,), (255.0,), "flags")
    with pytest.raises(InputError, match="mean has 2 values; input 'image' has 3 channel"):
        input_normalization(tensor, None, mean=(1.0, 2.0))
    with pytest.raises(InputError, match="std must not be 0"):
        input_normalization(tensor, None, std=(0.0,))


def test_the_detection_head_is_found_by_the_post_process_op(color_models: Path) -> None:
    from agent.inference.metadata import read_processing

    head = read_processing(color_models / "detect_float.tflite").detection
    assert head is not None
    assert (head.boxes, head.classes, head.scores, head.count) == (0, 1, 2, 3)
    assert (head.num_classes, head.max_detections) == (3, 10)
    assert read_processing(color_models / "segment_float.tflite").detection is None


@pytest.mark.parametrize(
    ("lines", "classes", "names"),
    [
        (["background", "tench", "goldfish"], 3, ["background", "tench", "goldfish"]),
        (["red", "green", "blue", "", ""], 3, ["red", "green", "blue"]),  # trailing blanks
        (["0  person", "2  car", "3: motorcycle"], 4, ["person", "1", "car", "motorcycle"]),
    ],
)
def test_labels_name_exactly_the_models_classes(
    lines: list[str], classes: int, names: list[str]
) -> None:
    from agent.inference.predict import label_names

    assert label_names(lines, classes, "model.tflite") == names


@pytest.mark.parametrize(
    ("lines", "classes", "message"),
    [
        (["tench", "goldfish"], 3, "has 2 labels but model.tflite has 3 classes"),
        (["background", "a", "b", "c"], 3, "has 4 labels but model.tflite has 3 classes"),
        (["0 person", "89 toothbrush"], 80, "has ids 0..89 but model.tflite has 80 classes"),
        ([], 3, "has 0 labels but model.tflite has 3 classes"),
    ],
)
def test_labels_that_do_not_fit_are_refused_naming_both_counts(
    lines: list[str], classes: int, message: str
) -> None:
    from agent.inference.predict import label_names

    with pytest.raises(InputError, match=message):
        label_names(lines, classes, "model.tflite")


@pytest.mark.parametrize(
    ("shapes", "kind"),
    [
        ([(1, 1001)], "classification"),
        ([(10,)], "classification"),
        ([(1, 1)], "tensors"),  # one score: nothing to rank
        ([(1, 32, 32, 3)], "tensors"),  # segmentation
        ([(1, 9, 9, 17)], "tensors"),  # pose heatmaps
        ([(1, 4), (1, 4)], "tensors"),
        ([(2, 10)], "tensors"),
    ],
)
def test_only_one_output_of_n_classes_is_ranked_as_classes(
    color_models: Path, shapes: list[tuple[int, ...]], kind: str
) -> None:
    from agent.inference.modelfile import inspect_model_file
    from agent.inference.predict import output_kind

    info = inspect_model_file(color_models / "color_float.tflite")
    assert output_kind(info, shapes, None)[0].value == kind


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "image", "message"),
    [
        ("cat.bmp", "cat.bmp", "not a TFLite model"),
        ("mobilenet_v1_0.25_128_quant_edgetpu.tflite", "cat.bmp", "compiled for the Edge TPU"),
        ("invalid_model_invoking_error.tflite", "cat.bmp", "the runtime cannot load it"),
        ("mobilenet_v1_0.25_128_quant.tflite", "missing.bmp", "does not exist"),
        ("mobilenet_v1_0.25_128_quant.tflite", "imagenet_labels.txt", "not an image Pillow can"),
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


def scene(path: Path) -> Path:
    """A 128x96 grey image in the detector's 4x4 grid of 32x24 cells: pure red top left, pure
    green bottom right, and a dull red cell (row 1, column 2) that scores about 0.16."""
    image = Image.new("RGB", (128, 96), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 32, 24))
    image.paste((0, 255, 0), (96, 72, 128, 96))
    image.paste((110, 80, 80), (64, 24, 96, 48))
    image.save(path)
    return path


def refused(*args: str) -> tuple[int, str]:
    result = run_cli("edgefleet-agent", "predict", *args, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgefleet-agent:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return result.returncode, errors[0]


@pytest.mark.slow
def test_a_labels_file_that_does_not_fit_the_classifier_is_refused(tmp_path: Path) -> None:
    # Issue 20: a labels file of another model printed wrong names, exit 0.
    short = tmp_path / "labels_1000.txt"
    short.write_text("\n".join(LABELS.read_text().splitlines()[1:]) + "\n")  # no "background"
    code, error = refused(str(MOBILENET), str(DATA / "cat.bmp"), "--labels", str(short))
    assert code == 1
    assert "1000 labels" in error and "1001 classes" in error


@pytest.mark.slow
def test_detector_prints_boxes_above_the_threshold_with_labels(
    color_models: Path, tmp_path: Path
) -> None:
    image = str(scene(tmp_path / "scene.png"))
    model = str(color_models / "detect_float.tflite")
    labels = str(color_models / "color_labels.txt")
    text = run_cli("edgefleet-agent", "predict", model, image, "--labels", labels).stdout
    lines = text.splitlines()
    assert "score >= 0.5" in lines[0] and "ymin,xmin,ymax,xmax in pixels" in lines[0]
    assert "128x96" in lines[0]
    assert [line.split()[2:] for line in lines[1:]] == [
        ["red", "0,0,24,32"],
        ["green", "72,96,96,128"],
    ]
    found = predict(model, image, "--labels", labels, "--threshold", "0.1")
    assert found["kind"] == "detection" and found["threshold"] == 0.1
    assert found["image_size"] == {"width": 128, "height": 96}
    detections = found["detections"]
    assert [(d["label"], d["box"], d["box_pixels"]) for d in detections] == [
        ("red", [0.0, 0.0, 0.25, 0.25], [0, 0, 24, 32]),
        ("green", [0.75, 0.75, 1.0, 1.0], [72, 96, 96, 128]),
        ("red", [0.25, 0.5, 0.5, 0.75], [24, 64, 48, 96]),
    ]
    assert detections[0]["score"] > 0.99 and 0.1 <= detections[2]["score"] < 0.5
    # A labels file for another class count (one with "background" first) is refused.
    with_background = tmp_path / "labels.txt"
    with_background.write_text("background\nred\ngreen\nblue\n")
    code, error = refused(model, image, "--labels", str(with_background))
    assert code == 1 and "4 labels" in error and "3 classes" in error


@pytest.mark.slow
def test_segmenter_gets_its_output_tensors_described(color_models: Path, tmp_path: Path) -> None:
    image = str(scene(tmp_path / "scene.png"))
    model = str(color_models / "segment_float.tflite")
    text = run_cli("edgefleet-agent", "predict", model, image).stdout
    assert "not a classifier or detector" in text
    assert "segmentation  [1, 32, 32, 3]  float32" in text
    assert "tench" not in text and "top" not in text
    result = predict(model, image)
    assert result["kind"] == "tensors" and "top_k" not in result
    [output] = result["outputs"]
    assert (output["name"], output["shape"], output["dtype"]) == (
        "segmentation", [1, 32, 32, 3], "float32")  # fmt: skip
    assert 0.0 <= output["min"] < output["max"] <= 1.0  # softmax


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "flag", "message"),
    [
        ("segment_float.tflite", ["--top-k", "3"], "--top-k ranks classes"),
        ("detect_float.tflite", ["--top-k", "3"], "--top-k ranks classes"),
        ("color_float.tflite", ["--threshold", "0.3"], "--threshold filters detections"),
        ("segment_float.tflite", ["--labels", "color_labels.txt"], "--labels names classes"),
    ],
)
def test_flags_that_do_not_fit_the_model_are_refused_with_exit_2(
    color_models: Path, tmp_path: Path, model: str, flag: list[str], message: str
) -> None:
    flag = [str(color_models / f) if f.endswith(".txt") else f for f in flag]
    image = str(scene(tmp_path / "scene.png"))
    code, error = refused(str(color_models / model), image, *flag)
    assert code == 2
    assert message in error and model in error


@pytest.mark.slow
def test_mean_and_std_come_from_metadata_else_the_default_and_flags_win(
    color_models: Path, tmp_path: Path
) -> None:
    image = str(scene(tmp_path / "scene.png"))
    plain = str(color_models / "color_float.tflite")
    with_metadata = str(color_models / "color_float_meta.tflite")  # mean 0, std 255

    def scores(result: dict[str, Any]) -> list[float]:
        return [r["score"] for r in sorted(result["top_k"], key=lambda r: r["index"])]

    default = predict(plain, image)
    assert default["normalization"] == {"mean": [127.5], "std": [127.5], "source": "default"}
    flagged = predict(plain, image, "--mean", "0", "--std", "255")
    assert flagged["normalization"]["source"] == "flags"
    assert scores(flagged) != pytest.approx(scores(default), abs=1e-3)
    from_metadata = predict(with_metadata, image)
    assert from_metadata["normalization"] == {"mean": [0.0], "std": [255.0], "source": "metadata"}
    assert scores(from_metadata) == pytest.approx(scores(flagged), abs=1e-6)
    overridden = predict(with_metadata, image, "--mean", "127.5", "--std", "127.5")
    assert scores(overridden) == pytest.approx(scores(default), abs=1e-6)
    per_channel = predict(plain, image, "--mean", "0,0,0", "--std", "255,255,255")
    assert scores(per_channel) == pytest.approx(scores(flagged), abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_corrupt_metadata_is_a_model_file_error_never_a_crash(
    color_models: Path, data: st.DataObject
) -> None:
    from agent.errors import ModelFileError
    from agent.inference.metadata import read_processing_bytes

    model = bytearray((color_models / "color_float_meta.tflite").read_bytes())
    start = model.index(b"M001") - 4  # the metadata flatbuffer's root offset
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(start, start + 200))
        model[at] = data.draw(st.integers(0, 255))
    try:
        found = read_processing_bytes(bytes(model))
    except ModelFileError:
        return
    assert len(found.input_normalization) == 1
