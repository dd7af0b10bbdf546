"""``edgefleet model build``: runs here, no server needed."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["add_bench_parsers", "add_parser", "build_data"]


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0..100")
    return value


def _percents(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        value = _points(part.strip())
        if not 0 < value < 100:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: a sparsity is within (0, 100)")
        values.append(value)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} names a sparsity twice")
    if len(values) > 4:
        raise argparse.ArgumentTypeError("at most 4 sparsities (a push takes 16 variants)")
    return tuple(values)


def add_parser(sub: Any) -> None:
    """Register the ``model`` command group."""
    model = sub.add_parser(
        "model",
        help="model optimization: build measured variants from a float model",
    )
    model_sub = model.add_subparsers(dest="action", required=True)
    build = model_sub.add_parser(
        "build",
        help="quantize a float .tflite into every variant and measure each",
        description="Writes OUT_DIR with float32, float16, dynamic-int8, weight-only-int8, "
        "int8 (full integer, calibrated) and int16x8 (calibrated) variants made with "
        "ai-edge-quantizer (named as 'models push' names these kinds), "
        "an Edge TPU variant when edgetpu_compiler is on PATH (or --edgetpu FILE), and "
        "report.json / report.txt: size, latency here (one thread), agreement with float32 "
        "and accuracy with labels. A variant failing does not stop the others; OUT_DIR "
        "appears whole or not at all. Push it with 'edgefleet models push OUT_DIR'.",
    )
    build.add_argument(
        "model", type=Path, help="the float32 .tflite (one without a signature gets one)"
    )
    build.add_argument(
        "--calibration",
        required=True,
        help="representative inputs: a folder of images (resized and normalized for the "
        "model's input), an .npz with x, or sklearn:digits (its training half)",
    )
    build.add_argument("--out", type=Path, required=True, help="the output directory")
    build.add_argument(
        "--eval",
        help="evaluation data: a folder of images (labelled by its labels.csv of file,label "
        "rows, if any), an .npz with x and optionally y (labels), or sklearn:digits (its "
        "held-out half); default: the calibration samples, unlabelled. Without labels, "
        "variants are compared by top-1 agreement with float32",
    )
    build.add_argument(
        "--labels",
        type=Path,
        help="class names, line i naming class i: labels.csv rows may name classes by these",
    )
    build.add_argument(
        "--max-images",
        type=int,
        default=1000,
        help="take at most this many images of a folder, in name order (default 1000)",
    )
    _add_floors(build, "float32")
    build.add_argument(
        "--prune",
        type=_percents,
        default=(),
        metavar="P[,P...]",
        help="also build magnitude-pruned variants at these sparsities (percent, e.g. 50,75), "
        "each as float32 and full int8: pruned{P}-float32, pruned{P}-int8. Dense on a "
        "device (LiteRT runs zeros like any number): the gain is the transport size",
    )
    build.add_argument("--edgetpu", type=Path, help="an _edgetpu.tflite compiled elsewhere")
    _add_output_flags(build)
    build.set_defaults(func=_cmd_build)
    _add_distill_parser(model_sub)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: hidden widths are whole numbers") from exc
    return values


def _add_distill_parser(model_sub: Any) -> None:
    distill = model_sub.add_parser(
        "distill",
        help="train a small student from a teacher's soft labels, then build its variants",
        description="Labels the training inputs (no labels needed) and synthetic ones made from "
        "them (mixtures and noisy copies) with the TEACHER (LiteRT), trains a perceptron "
        "student on the teacher's softened outputs with PyTorch on the CPU, converts it with "
        "litert-torch, and builds it like 'model build' into OUT_DIR: distilled-float32, "
        "distilled-int8 and the rest, with the teacher measured beside them as the reference. "
        "Push it with 'edgefleet models push OUT_DIR'. Needs the distill extra (torch, "
        "litert-torch); students over flat inputs [1, N] only.",
    )
    distill.add_argument("teacher", type=Path, help="the float .tflite to learn from")
    distill.add_argument(
        "--train",
        required=True,
        help="unlabelled training inputs: an .npz with x (y is ignored), or sklearn:digits "
        "(its training half); also the calibration data of the student's int8 variants",
    )
    distill.add_argument("--out", type=Path, required=True, help="the output directory")
    distill.add_argument(
        "--eval",
        help="evaluation data: an .npz with x and optionally y, or sklearn:digits (its "
        "held-out half); default: the training inputs, unlabelled",
    )
    distill.add_argument(
        "--hidden",
        type=_hidden,
        default=(16,),
        metavar="N[,N...]",
        help="the student's hidden layer widths (default 16: a 64-16-10 student for digits)",
    )
    distill.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    distill.add_argument(
        "--temperature", type=float, default=4.0, help="softening of both outputs (default 4)"
    )
    distill.add_argument(
        "--synthetic",
        type=int,
        default=20_000,
        help="inputs made from the training ones for the teacher to label (default 20000)",
    )
    distill.add_argument("--seed", type=int, default=0, help="for a repeatable student")
    _add_floors(distill, "the teacher")
    _add_output_flags(distill)
    distill.set_defaults(func=_cmd_distill)


def _add_floors(parser: Any, reference: str) -> None:
    parser.add_argument(
        "--min-accuracy", type=_points, help="reject variants under this accuracy (percent)"
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=_points,
        help=f"reject variants more than this many points below {reference}",
    )


def _add_output_flags(parser: Any) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--json", action="store_true", help="print report.json")


def _cmd_distill(args: argparse.Namespace) -> int:
    import tempfile  # noqa: PLC0415

    from fleet_server.optimize.build import build  # noqa: PLC0415 - needs the optimize extra
    from fleet_server.optimize.distill import distill, require_torch  # noqa: PLC0415

    _require_quantizer()
    require_torch()
    if args.out.exists() and not args.force:
        raise BadRequestError(f"{args.out} exists; choose another --out or pass --force")
    if args.out.exists() and not args.out.is_dir():  # before training, not after
        raise BadRequestError(f"{args.out} is not a folder: --force replaces an output folder only")
    args.model, args.labels, args.max_images = args.teacher, None, 1000
    notes: list[str] = []
    for spec in (args.train, args.eval):
        if spec and Path(spec).is_dir():
            raise BadRequestError(f"{spec} is a folder: model distill takes an .npz or a dataset")
    train_x, _ = build_data(args.train, args, "train", notes)
    eval_x, eval_y = build_data(args.eval, args, "test", notes) if args.eval else (None, None)

    def progress(text: str) -> None:
        print(f"[model distill] {text}", file=sys.stderr, flush=True)

    result = distill(
        args.teacher,
        train_x,
        hidden=args.hidden,
        epochs=args.epochs,
        temperature=args.temperature,
        synthetic=args.synthetic,
        seed=args.seed,
        progress=progress,
    )
    shape = "-".join(str(n) for n in result.layers)
    notes.append(
        f"distilled from {args.teacher.name} ({result.teacher_parameters:,} parameters) into "
        f"a {shape} perceptron ({result.parameters:,} parameters): {result.samples:,} "
        f"inputs and {result.synthetic:,} synthetic ones labelled by the teacher, "
        f"{result.epochs} epochs at temperature {result.temperature:g}, seed {args.seed}, "
        f"{result.train_s:.1f} s of training; top-1 agreement with the teacher on the training "
        f"inputs {result.teacher_agreement:.2%}; converted with litert-torch in "
        f"{result.convert_s:.1f} s"
    )
    with tempfile.TemporaryDirectory(prefix="edgefleet-student-") as folder:
        student = Path(folder) / "student.tflite"
        student.write_bytes(result.model)
        report = build(
            student,
            calibration=train_x,
            out=args.out,
            eval_x=eval_x,
            eval_y=eval_y,
            min_accuracy=args.min_accuracy / 100 if args.min_accuracy is not None else None,
            max_accuracy_drop=args.max_accuracy_drop / 100
            if args.max_accuracy_drop is not None
            else None,
            force=args.force,
            progress=progress,
            notes=notes,
            technique="distilled",
            teacher=args.teacher,
        )
    if args.json:
        print(report.to_json())
    else:
        print(f"{args.teacher.name} -> student on {report.host}: {report.samples_eval} samples")
        print(report.table(), end="")
        print(f"wrote {args.out}/ (report.json, report.txt)")
    return 0


def _require_quantizer() -> None:
    try:
        import ai_edge_quantizer  # noqa: F401, PLC0415
    except ImportError as exc:
        raise BadRequestError(
            "model build needs ai-edge-quantizer: pip install 'edgefleet[optimize]'"
        ) from exc


def _cmd_build(args: argparse.Namespace) -> int:
    from fleet_server.optimize.build import build  # noqa: PLC0415 - needs the optimize extra

    _require_quantizer()
    if args.model.is_dir() or args.model.suffix in (".keras", ".h5"):
        raise BadRequestError(_keras_message(args.model))
    if args.max_images < 1:
        raise BadRequestError("--max-images must be at least 1")
    notes: list[str] = []
    calibration, _ = build_data(args.calibration, args, "train", notes)
    eval_x, eval_y = build_data(args.eval, args, "test", notes) if args.eval else (None, None)
    report = build(
        args.model,
        calibration=calibration,
        out=args.out,
        eval_x=eval_x,
        eval_y=eval_y,
        min_accuracy=args.min_accuracy / 100 if args.min_accuracy is not None else None,
        max_accuracy_drop=args.max_accuracy_drop / 100
        if args.max_accuracy_drop is not None
        else None,
        edgetpu=args.edgetpu,
        force=args.force,
        progress=lambda text: print(f"[model build] {text}", file=sys.stderr, flush=True),
        notes=notes,
        prune_percents=args.prune,
    )
    if args.json:
        print(report.to_json())
    else:
        print(f"{args.model.name} on {report.host}: {report.samples_eval} evaluation samples")
        print(report.table(), end="")
        print(f"wrote {args.out}/ (report.json, report.txt)")
    return 0


def build_data(
    spec: str, args: argparse.Namespace, part: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples (and labels) from a folder of images, an .npz or a shipped dataset."""
    from fleet_server.optimize.images import load_images  # noqa: PLC0415
    from fleet_server.routing.datasets import samples  # noqa: PLC0415

    path = Path(spec)
    if not spec.startswith("sklearn:") and path.is_dir():
        images = load_images(path, args.model, labels=args.labels, limit=args.max_images)
        use = "calibration" if part == "train" else "evaluation"
        note = f"{use}: {spec}: {len(images.files)} images"
        note += ", labelled" if images.y is not None else ", unlabelled"
        if images.left_out:
            note += (
                f"; {images.left_out} more left out (at most --max-images {args.max_images}, "
                "and 1 GiB of prepared inputs)"
            )
        if images.skipped:
            note += f"; {images.skipped} files that are not images skipped"
        notes.append(note)
        print(f"[model build] {note}", file=sys.stderr, flush=True)
        return images.x, images.y
    if not spec.startswith("sklearn:") and path.suffix.lower() != ".npz":
        what = "does not exist" if not path.exists() else "is not data this command reads"
        raise BadRequestError(
            f"{spec} {what}: give a folder of images, an .npz with an array x (and y for "
            "labels), or sklearn:digits"
        )
    return samples(spec, part=part)


def _keras_message(path: Path) -> str:
    if importlib.util.find_spec("tensorflow") is None:
        return (
            f"{path} is a Keras or SavedModel model; converting it needs TensorFlow, which is "
            "not installed. Convert it to a float32 .tflite first (tf.lite.TFLiteConverter), "
            "or install tensorflow-cpu"
        )
    return (
        f"{path} is a Keras or SavedModel model: convert it with "
        "tf.lite.TFLiteConverter.from_saved_model (no optimizations) and build from the .tflite"
    )


def add_bench_parsers(models_sub: Any) -> None:
    """Register ``models bench`` and ``models bench-report``."""
    bench = models_sub.add_parser(
        "bench",
        help="ask devices running a model to benchmark it on their hardware",
        description="Sends the bench command over MQTT to the matching devices that have the "
        "model installed; each runs it for 2 s on its own interpreter and reports p50, p95 "
        "and throughput over the device API. The fleet's median per hardware class then "
        "drives variant selection for that class.",
    )
    bench.add_argument("name", help="model name")
    bench.add_argument("--selector", action="append", metavar="KEY=VALUE")
    bench.add_argument("--device", default="", help="only this device")
    bench.set_defaults(func=_cmd_bench)
    report = models_sub.add_parser(
        "bench-report", help="a model's benchmarks per version, variant and hardware class"
    )
    report.add_argument("name", help="model name")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=_cmd_bench_report)


def _cmd_bench(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    response = common.admin(args).call(
        "RequestBenchmark",
        pb.RequestBenchmarkRequest(
            model_name=args.name,
            selector=common.pairs(args.selector, "selector"),
            device_id=args.device,
        ),
    )
    print(
        f"asked {len(response.device_ids)} device(s) to benchmark {args.name}: "
        f"{', '.join(response.device_ids)}; see 'edgefleet models bench-report {args.name}'"
    )
    return 0


def _cmd_bench_report(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from protos import admin_pb2 as pb  # noqa: PLC0415

    report = common.admin(args).call(
        "GetBenchReport", pb.GetBenchReportRequest(model_name=args.name)
    )
    if args.json:
        print(json.dumps(common.as_dict(report), indent=2))
        return 0
    if not report.rows:
        print(f"no benchmarks of {args.name} yet: 'edgefleet models bench {args.name}'")
        return 0
    print(
        f"{'VERSION':10} {'VARIANT':17} {'KIND':13} {'HARDWARE':16} {'BACKEND':8} "
        f"{'DEVICES':>7} {'P50 MS':>9} {'P95 MS':>9} {'PER S':>9}  SOURCE"
    )
    for r in report.rows:
        print(
            f"{r.version:10} {r.variant:17} {r.quantization:13} {r.hardware_class:16} "
            f"{r.backend:8} {r.devices:7d} {r.p50_ms:9.4f} {r.p95_ms:9.4f} "
            f"{r.throughput_per_s:9.1f}  {r.source}"
        )
    return 0
