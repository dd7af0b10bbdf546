"""``predict`` (and the files it shares with ``infer``) against hostile inputs: model files whose
options or anchors are crafted, images and labels that are pipes, devices or bombs.

Each answer is one clear error line and a non-zero exit, or a correct answer; never a
traceback, a hang or unbounded memory.
"""

from __future__ import annotations

import math
import os
import struct
import time
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from PIL import Image

from agent.errors import InputError, ModelFileError
from agent.inference.metadata import DetectionHead
from tests.harness import run_cli

# flexbuffers types (flexbuffers.Type) and the packed type byte of a 32-bit wide value.
_INT, _FLOAT, _MAP, _VECTOR = 1, 3, 9, 10


def _packed(kind: int) -> int:
    return kind << 2 | 2  # bit width 32


def _pad(out: bytearray) -> None:
    while len(out) % 4:
        out.append(0)


def shared_vectors_options(ints: dict[str, float], depth: int, width: int) -> bytes:
    """A flexbuffer map of ``ints`` (and floats) plus a key "zzz" whose value is ``depth``
    levels of vectors, each of ``width`` references to the same vector below: about a
    kilobyte that decodes to ``width ** depth`` values (a flexbuffer is a graph, like XML's
    billion laughs)."""
    out = bytearray()
    out += struct.pack("<I", 1)
    child = len(out)
    out += struct.pack("<i", 0)
    out.append(_packed(_INT))
    _pad(out)
    for _ in range(depth):
        out += struct.pack("<I", width)
        start = len(out)
        for _ in range(width):
            out += struct.pack("<I", len(out) - child)
        out += bytes([_packed(_VECTOR)]) * width
        _pad(out)
        child = start
    keys = [*sorted(ints), "zzz"]
    at: dict[str, int] = {}
    for key in keys:
        at[key] = len(out)
        out += key.encode() + b"\0"
    _pad(out)
    out += struct.pack("<I", len(keys))
    keys_vector = len(out)
    for key in keys:
        out += struct.pack("<I", len(out) - at[key])
    out += struct.pack("<I", len(out) - keys_vector)
    out += struct.pack("<I", 4)  # the keys' byte width
    out += struct.pack("<I", len(keys))
    values = len(out)
    for key in keys[:-1]:
        value = ints[key]
        out += struct.pack("<f", value) if isinstance(value, float) else struct.pack("<i", value)
    out += struct.pack("<I", len(out) - child)
    out += bytes(_packed(_FLOAT if isinstance(ints[k], float) else _INT) for k in keys[:-1])
    out.append(_packed(_VECTOR))
    _pad(out)
    out += struct.pack("<I", len(out) - values)
    out += bytes([_packed(_MAP), 4])
    return bytes(out)


DETECT_OPTIONS: dict[str, float] = {
    "max_detections": 10,
    "max_classes_per_detection": 1,
    "detections_per_class": 100,
    "num_classes": 3,
    "nms_score_threshold": 0.1,
    "nms_iou_threshold": 0.5,
    "y_scale": 10.0,
    "x_scale": 10.0,
    "h_scale": 5.0,
    "w_scale": 5.0,
}


def detector(
    color_models: Path, *, options: bytes | None = None, anchors: float | None = None
) -> bytes:
    """The test detector's bytes with its post-process options or all its anchors replaced."""
    model = schema.ModelT.InitFromPackedBuf(
        bytearray((color_models / "detect_float.tflite").read_bytes()), 0
    )
    graph = model.subgraphs[0]
    post = graph.operators[-1]
    if options is not None:
        post.customOptions = np.frombuffer(options, dtype=np.uint8)
    if anchors is not None:
        buffer = model.buffers[graph.tensors[post.inputs[2]].buffer]
        count = len(buffer.data) // 4
        buffer.data = np.frombuffer(np.full(count, anchors, "<f4").tobytes(), dtype=np.uint8)
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_post_process_options_that_share_their_vectors_are_read_in_bounded_time(
    color_models: Path,
) -> None:
    # 20 ** 8 values in 1.1 KB: decoding all options hung predict (and `edgefleet models`).
    from agent.inference.metadata import read_processing_bytes

    options = shared_vectors_options(DETECT_OPTIONS, depth=8, width=20)
    assert len(options) < 2000
    start = time.monotonic()
    head = read_processing_bytes(detector(color_models, options=options)).detection
    assert time.monotonic() - start < 2.0
    assert head is not None and head.num_classes == 3 and head.max_detections == 10


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (b"\xff" * 40, "corrupt TFLite_Detection_PostProcess options"),
        (shared_vectors_options({"num_classes": 0}, 1, 1), "declares 0 classes"),
        (shared_vectors_options({"num_classes": -5}, 1, 1), "declares -5 classes"),
        (shared_vectors_options({"num_classes": 10**9}, 1, 1), "declares 1000000000 classes"),
        (shared_vectors_options({}, 1, 1), "declares 0 classes"),
    ],
)
def test_post_process_options_that_make_no_sense_are_a_model_file_error(
    color_models: Path, options: bytes, message: str
) -> None:
    from agent.inference.metadata import read_processing_bytes

    with pytest.raises(ModelFileError, match=message):
        read_processing_bytes(detector(color_models, options=options))


def head() -> DetectionHead:
    return DetectionHead(boxes=0, classes=1, scores=2, count=3, num_classes=3, max_detections=4)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("boxes", "classes", "scores", "count", "kept"),
    [
        ([[NAN, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 1], [0.9, 0.8], [2], [1]),
        ([[0, 0, INF, 1], [0, 0, 0.5, 0.5]], [0, 1], [0.9, 0.8], [2], [1]),
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [NAN, INF], [0.9, 0.8], [2], []),
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [-3, 10**6], [0.9, 0.8], [2], [-3, 10**6]),
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 1], [NAN, -INF], [2], []),
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 1], [0.9, 0.8], [NAN], []),
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 1], [0.9, 0.8], [1e30], [0, 1]),
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 1], [0.9, 0.8], [-4], []),
    ],
)
def test_detections_that_are_not_numbers_are_left_out_never_a_crash(
    boxes: list[list[float]],
    classes: list[float],
    scores: list[float],
    count: list[float],
    kept: list[int],
) -> None:
    # NaN anchors in a model gave NaN boxes: predict died with "cannot convert float NaN".
    from agent.inference.predict import detections

    outputs = [np.asarray(v, dtype=np.float32) for v in (boxes, classes, scores, count)]
    found = detections(outputs, head(), 0.5, ["red", "green", "blue"], (128, 96))
    assert [d.index for d in found] == kept
    for d in found:
        assert all(0.0 <= v <= 1.0 for v in d.box)
        assert d.label == (["red", "green", "blue"][d.index] if 0 <= d.index < 3 else str(d.index))


def test_predict_json_has_null_where_a_model_output_nan() -> None:
    from agent.inference.metadata import Normalization
    from agent.inference.predict import OutputKind, PredictResult, TensorSummary, as_json
    from agent.inference.preprocess import Classification

    norm = Normalization((0.0,), (1.0,), "flags")
    ranked = PredictResult(
        kind=OutputKind.CLASSIFICATION,
        normalization=norm,
        image_size=(1, 1),
        classes=(Classification(0, NAN, "a"), Classification(1, INF, "b")),
    )
    assert [c["score"] for c in as_json(ranked)["top_k"]] == [None, None]
    described = PredictResult(
        kind=OutputKind.TENSORS,
        normalization=norm,
        image_size=(1, 1),
        tensors=(TensorSummary("t", (2,), "float32", -INF, INF, NAN),),
    )
    out = as_json(described)["outputs"][0]
    assert (out["min"], out["max"], out["mean"]) == (None, None, None)


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ((NAN,), (1.0,), r"mean \[nan\] \(given by --mean/--std\) is not finite"),
        ((0.0,), (INF,), "not finite"),
        ((0.0,), (0.0,), "std must not be 0"),
        ((0.0,), (1e-45,), "beyond the float32 range"),
        ((0.0,), (1.0, 1.0), "std has 2 values"),
    ],
)
def test_a_normalization_that_breaks_the_pixels_is_refused(
    color_models: Path, mean: tuple[float, ...], std: tuple[float, ...], message: str
) -> None:
    from agent.inference.modelfile import inspect_model_file
    from agent.inference.preprocess import input_normalization

    tensor = inspect_model_file(color_models / "color_float.tflite").inputs[0]
    with pytest.raises(InputError, match=message):
        input_normalization(tensor, None, mean, std)


@pytest.fixture
def specials(tmp_path: Path) -> dict[str, Path]:
    """A pipe no one writes to, a link to /dev/zero, and a folder."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    return {"fifo": fifo, "zero": zero, "folder": tmp_path}


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder"])
def test_an_image_or_labels_that_are_not_files_are_refused_without_reading(
    specials: dict[str, Path], kind: str
) -> None:
    # A pipe blocked predict forever; labels from /dev/zero read until memory ran out.
    from agent.inference.preprocess import load_image, read_labels

    with pytest.raises(InputError, match=r"not a regular file|Is a directory"):
        load_image(specials[kind])
    with pytest.raises(InputError, match=r"not a regular file|Is a directory"):
        read_labels(specials[kind])


def test_labels_that_are_not_text_or_too_large_are_refused(tmp_path: Path) -> None:
    from agent.inference.preprocess import read_labels

    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"red\n\xff\xfe\x00green\n")
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_labels(binary)
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as handle:
        handle.truncate(17 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(InputError, match="more than the"):
        read_labels(huge)


def test_an_image_over_64_mpixels_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    # Pillow only warns between its limit and twice it: a 12 KB PNG of 100 Mpixels took
    # 550 MB and printed a two-line warning.
    from agent.inference.preprocess import load_image

    for size in ((9000, 8000), (10000, 10000)):
        path = tmp_path / f"{size[0]}.png"
        Image.new("1", size).save(path)
        assert path.stat().st_size < 64 * 1024
        with pytest.raises(InputError, match="pixels"):
            load_image(path)


@pytest.mark.parametrize("size", [(1, 1), (3, 2000)])
def test_tiny_and_thin_images_are_classified(
    color_models: Path, tmp_path: Path, size: tuple[int, int]
) -> None:
    from agent.inference.modelfile import inspect_model_file
    from agent.inference.preprocess import image_to_tensor, load_image

    path = tmp_path / "red.png"
    Image.new("RGB", size, (255, 0, 0)).save(path)
    tensor = inspect_model_file(color_models / "color_float.tflite").inputs[0]
    data = image_to_tensor(load_image(path), tensor)
    assert data.shape == (1, 32, 32, 3) and np.allclose(data[..., 0], 1.0)


def one_error(*args: str) -> tuple[int, str]:
    result = run_cli("edgefleet-agent", "predict", *args, check=False, timeout=60)
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgefleet-agent:")]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    return result.returncode, errors[0]


def scene(path: Path) -> Path:
    image = Image.new("RGB", (128, 96), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 32, 24))
    image.save(path)
    return path


@pytest.mark.slow
def test_predict_on_hostile_detectors_answers_or_says_one_line(
    color_models: Path, tmp_path: Path
) -> None:
    image = scene(tmp_path / "scene.png")
    labels = str(color_models / "color_labels.txt")
    laughs = tmp_path / "laughs.tflite"
    laughs.write_bytes(
        detector(color_models, options=shared_vectors_options(DETECT_OPTIONS, 8, 20))
    )
    result = run_cli("edgefleet-agent", "predict", str(laughs), str(image), "--labels", labels,
                     "--json", timeout=60)  # fmt: skip
    assert '"label": "red"' in result.stdout
    nan = tmp_path / "nan.tflite"
    nan.write_bytes(detector(color_models, anchors=math.nan))
    result = run_cli("edgefleet-agent", "predict", str(nan), str(image), "--json", timeout=60)
    assert '"detections": []' in result.stdout and "Traceback" not in result.stderr
    code, error = one_error(str(nan), str(specials_fifo(tmp_path)))
    assert code == 1 and "not a regular file" in error


def specials_fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder"])
def test_a_model_path_that_is_not_a_file_is_refused_without_blocking(
    specials: dict[str, Path], kind: str
) -> None:
    # `predict FIFO image` blocked in open() for ever.
    from agent.inference.metadata import read_processing
    from agent.inference.modelfile import inspect_model_file

    with pytest.raises(ModelFileError, match=r"not a regular file|Is a directory"):
        inspect_model_file(specials[kind])
    with pytest.raises(ModelFileError, match=r"not a regular file|Is a directory"):
        read_processing(specials[kind])


def shared_units_metadata(tensors: int, units: int) -> bytes:
    """TFLite metadata (``M001``) whose ``tensors`` input tensors all list the same vector of
    ``units`` references to one process unit (not a normalization): 50 KB for 4096 x 4096."""
    b = flatbuffers.Builder(1024)

    def same(offset: int, count: int) -> int:
        b.StartVector(4, count, 4)
        for _ in range(count):
            b.PrependUOffsetTRelative(offset)
        return int(b.EndVector())

    b.StartObject(2)  # ProcessUnit: options_type 2 (not NormalizationOptions)
    b.PrependUint8Slot(0, 2, 0)
    units_vector = same(b.EndObject(), units)
    b.StartObject(7)  # TensorMetadata: process_units 4
    b.PrependUOffsetTRelativeSlot(4, units_vector, 0)
    tensors_vector = same(b.EndObject(), tensors)
    b.StartObject(7)  # SubGraphMetadata: input_tensor_metadata 2
    b.PrependUOffsetTRelativeSlot(2, tensors_vector, 0)
    subgraphs = same(b.EndObject(), 1)
    b.StartObject(8)  # ModelMetadata: subgraph_metadata 3
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def test_metadata_whose_tensors_share_their_units_is_read_in_bounded_time(
    color_models: Path,
) -> None:
    # 4096 inputs x the same 4096 process units: 30 s of CPU in read_processing (the admin
    # CLI's image sample reads it) for a 50 KB file.
    from agent.inference.metadata import read_processing_bytes

    model = schema.ModelT.InitFromPackedBuf(
        bytearray((color_models / "color_float_meta.tflite").read_bytes()), 0
    )
    model.subgraphs[0].inputs = [0] * 4096
    metadata = shared_units_metadata(4096, 4096)
    model.buffers[model.metadata[0].buffer].data = np.frombuffer(metadata, dtype=np.uint8)
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    start = time.monotonic()
    with pytest.raises(ModelFileError, match="in all; refusing"):
        read_processing_bytes(bytes(builder.Output()))
    assert time.monotonic() - start < 2.0


def test_predict_text_escapes_control_characters_from_the_model_and_labels() -> None:
    from agent.inference.metadata import Normalization
    from agent.inference.predict import OutputKind, PredictResult, TensorSummary, as_text
    from agent.inference.preprocess import Classification

    norm = Normalization((0.0,), (1.0,), "flags")
    hostile = "\x1b]0;owned\x07\nforged line"
    for result in (
        PredictResult(
            OutputKind.CLASSIFICATION, norm, (1, 1), classes=(Classification(0, 1.0, hostile),)
        ),
        PredictResult(
            OutputKind.TENSORS,
            norm,
            (1, 1),
            tensors=(TensorSummary(hostile, (1,), "float32", 0, 0, 0),),
        ),
    ):
        lines = as_text(result)
        assert not any(c in "".join(lines) for c in "\x1b\x07\n"), lines
        assert any("\\x1b]0;owned" in line for line in lines)
