"""``edgefleet model build``: from one float model to measured, device-ready variants.

Each variant is made with ai-edge-quantizer (no TensorFlow), then measured on this host with
LiteRT (one thread): size, latency per invoke (median, p95), top-1 agreement and largest output
difference against the float model, and accuracy when the evaluation data has labels. A variant
under the accuracy floor is rejected with the reason; a variant that fails to build does not
stop the others. The output directory appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.modelfile import ModelInfo, inspect_model_bytes, inspect_model_file
from agent.inference.runtime import find_runtime
from fleet_server.catalog.naming import TECHNIQUES
from fleet_server.catalog.select import hardware_class
from fleet_server.errors import BadRequestError
from fleet_server.optimize.prune import prune, transport_size, weight_sparsity
from fleet_server.optimize.signature import SIGNATURE_KEY, add_signature
from fleet_server.optimize.uint8io import with_uint8_io
from fleet_server.routing.evaluate import Scores, scores

__all__ = ["BuildReport", "VariantReport", "build", "read_model"]

REPORT = "report.json"
TABLE = "report.txt"


@dataclass
class VariantReport:
    # float32, float16, dynamic-int8, weight-only-int8, int8, int16x8, edgetpu: the names
    # `models push` gives these kinds (fleet_server/catalog/naming.py)
    name: str
    file: str = ""
    status: str = "ok"  # ok | rejected | failed | skipped | reference (a teacher; not pushed)
    reason: str = ""
    size: int = 0
    size_ratio: float = 0.0  # to float32 (to the teacher in a distilled build)
    median_ms: float = 0.0
    p95_ms: float = 0.0
    top1_agreement: float | None = None  # with float32
    max_abs_diff: float | None = None
    accuracy: float | None = None  # with labels
    build_s: float = 0.0
    tool: str = ""  # what made it (ai-edge-quantizer recipe, edgetpu_compiler version)
    technique: str = ""  # beside the quantization: "pruned", "distilled", or none
    sparsity: float | None = None  # zeros among the conv/FC weights
    transport_size: int = 0  # bytes of the zstd copy the server sends


@dataclass
class BuildReport:
    source: str
    source_sha256: str
    host: str
    hardware_class: str
    samples_calibration: int
    samples_eval: int
    labelled: bool
    min_accuracy: float | None
    max_accuracy_drop: float | None
    variants: list[VariantReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the inputs were taken

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildReport:
        raw = json.loads(text)
        raw.setdefault("notes", [])  # reports from before issue 24
        variants = [VariantReport(**v) for v in raw.pop("variants")]
        return cls(**raw, variants=variants)

    def table(self) -> str:
        width = max([17, *(len(v.name) for v in self.variants)])
        lines = [
            f"{'VARIANT':{width}} {'STATUS':9} {'SIZE':>9} {'RATIO':>6} {'ZSTD':>9} {'SPARSE':>6} "
            f"{'P50 MS':>8} {'P95 MS':>8} {'TOP1 AGREE':>10} {'MAX DIFF':>9} {'ACCURACY':>8}  NOTE"
        ]
        for v in self.variants:
            agree = f"{v.top1_agreement:.2%}" if v.top1_agreement is not None else "-"
            diff = f"{v.max_abs_diff:.4f}" if v.max_abs_diff is not None else "-"
            accuracy = f"{v.accuracy:.2%}" if v.accuracy is not None else "-"
            size = f"{v.size:,}" if v.size else "-"
            ratio = f"{v.size_ratio:.0%}" if v.size_ratio >= 0.1 else f"{v.size_ratio:.1%}"
            ratio = ratio if v.size else "-"
            packed = f"{v.transport_size:,}" if v.transport_size else "-"
            sparse = f"{v.sparsity:.0%}" if v.sparsity is not None else "-"
            lines.append(
                f"{v.name:{width}} {v.status:9} {size:>9} {ratio:>6} {packed:>9} {sparse:>6} "
                f"{v.median_ms:8.4f} "
                f"{v.p95_ms:8.4f} {agree:>10} {diff:>9} {accuracy:>8}  {v.reason}"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


Progress = Callable[[str], None]


def _recipes() -> dict[str, tuple[Any, bool]]:
    """Variant name -> (ai-edge-quantizer recipe, needs calibration)."""
    from ai_edge_quantizer import recipe  # noqa: PLC0415 - the optimize extra

    float16 = [
        {
            "regex": ".*",
            "operation": "*",
            "algorithm_key": "float_casting",
            "op_config": {
                "weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                "compute_precision": "FLOAT",
                "explicit_dequantize": True,
            },
        }
    ]
    return {
        "float16": (float16, False),
        "dynamic-int8": (recipe.dynamic_wi8_afp32(), False),
        "weight-only-int8": (recipe.weight_only_wi8_afp32(), False),
        "int8": (recipe.static_wi8_ai8(), True),
        "int16x8": (recipe.static_wi8_ai16(), True),
    }


def read_model(model: Path) -> ModelInfo:
    """What the file holds.

    Raises:
        BadRequestError: no such file, or not a TFLite model.
    """
    if not model.is_file():
        raise BadRequestError(f"{model} does not exist")
    try:
        return inspect_model_file(model)
    except Exception as exc:
        raise BadRequestError(f"{model} is not a TFLite model: {exc}") from exc


def _check_source(model: Path, calibration: np.ndarray) -> tuple[str, str]:
    """The model's signature key and the signature's input name (those :func:`add_signature`
    gives a model without a signature).

    Raises:
        BadRequestError: no such file, not a float model with one input, or calibration data
            that does not fit its input.
    """
    info = read_model(model)
    if len(info.inputs) != 1:
        raise BadRequestError(
            f"{model.name} has {len(info.inputs)} inputs; model build takes one-input models"
        )
    tensor = info.inputs[0]
    if tensor.dtype != "float32" or info.quantization not in ("", "float32"):
        raise BadRequestError(
            f"{model.name} is already quantized ({info.quantization or tensor.dtype}); start "
            "from the float32 model"
        )
    if len(calibration) == 0:
        raise BadRequestError("the calibration data is empty; give a few hundred samples")
    shape = tuple(int(d) for d in tensor.shape)
    if tuple(calibration.shape[1:]) != shape[1:]:
        raise BadRequestError(
            f"calibration samples are {tuple(calibration.shape[1:])}; {model.name} takes "
            f"{shape[1:]} (without the batch axis)"
        )
    if not np.issubdtype(calibration.dtype, np.number):
        raise BadRequestError(f"calibration data must be numbers, not {calibration.dtype}")
    if not info.signatures:  # the quantizer feeds samples by signature: build adds one
        signed = inspect_model_bytes(add_signature(model.read_bytes()))
        return signed.signatures[0].key, signed.signatures[0].inputs[0]
    signature = info.signatures[0]
    return signature.key, signature.inputs[0]


def _quantize(
    source: Path,
    out: Path,
    recipe: Any,
    signature: tuple[str, str],
    calibration: np.ndarray | None,
) -> None:
    from ai_edge_quantizer import quantizer  # noqa: PLC0415 - the optimize extra

    # The quantizer prints its progress on stdout, where `--json` puts the report.
    with contextlib.redirect_stdout(sys.stderr):
        q = quantizer.Quantizer(str(source))
        q.load_quantization_recipe(recipe)
        result = None
        if calibration is not None:
            key, input_name = signature
            samples = {
                key: [{input_name: row[None, ...].astype(np.float32)} for row in calibration]
            }
            result = q.calibrate(samples)
        q.quantize(result).export_model(str(out), overwrite=True)


def _edgetpu_compile(model: Path, out_dir: Path) -> tuple[Path, str]:
    """Compile with edgetpu_compiler; the output file and the compiler's version line.

    Raises:
        RuntimeError: the compiler failed.
    """
    compiler = shutil.which("edgetpu_compiler") or "edgetpu_compiler"
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False, timeout=60
    ).stdout.strip()
    result = subprocess.run(
        [compiler, "-s", "-o", str(out_dir), str(model)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    if result.returncode != 0 or not compiled.exists():
        raise RuntimeError(result.stderr.strip() or result.stdout.strip() or "no output")
    return compiled, version


def build(
    model: Path,
    *,
    calibration: np.ndarray,
    out: Path,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    min_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    edgetpu: Path | None = None,
    force: bool = False,
    progress: Progress = lambda _text: None,
    notes: Sequence[str] = (),
    prune_percents: Sequence[float] = (),
    technique: str = "",
    teacher: Path | None = None,
) -> BuildReport:
    """Build every variant of ``model`` into ``out`` (atomically) and return the report
    (``notes``: how the data was taken, for the report).

    ``technique`` ("distilled") names the variants ``{technique}-float32`` and so on and
    marks them with it; ``teacher``, the model a distilled one learned from, is measured as the
    report's reference row: agreement and the accuracy drop are then against it.

    Raises:
        BadRequestError: bad input (model, data, output directory); nothing is written.
    """
    if technique not in TECHNIQUES:
        raise BadRequestError(f"unknown technique {technique!r}")
    if technique and prune_percents:
        raise BadRequestError(f"pruning a {technique} model is not built here")
    signature = _check_source(model, calibration)
    if eval_x is None:
        eval_x = calibration
    if eval_y is not None and len(eval_y) != len(eval_x):
        raise BadRequestError(f"{len(eval_x)} evaluation samples but {len(eval_y)} labels")
    if out.exists() and not force:
        raise BadRequestError(f"{out} exists; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise BadRequestError(f"{out} is not a folder: --force replaces an output folder only")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise BadRequestError(f"cannot write in {parent}: {exc.strerror}") from exc
    try:
        report = _build_into(
            staging,
            model,
            signature=signature,
            calibration=calibration,
            eval_x=eval_x,
            eval_y=eval_y,
            min_accuracy=min_accuracy,
            max_accuracy_drop=max_accuracy_drop,
            edgetpu=edgetpu,
            progress=progress,
            prune_percents=prune_percents,
            technique=technique,
            teacher=teacher,
        )
        report.notes[:0] = notes
        (staging / REPORT).write_text(report.to_json(), encoding="utf-8")
        (staging / TABLE).write_text(report.table(), encoding="utf-8")
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _replace(staging: Path, out: Path) -> None:
    """Move the finished staging directory to ``out``; an old ``out`` goes only after."""
    for path in [*staging.iterdir(), staging]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _measure(
    variant: VariantReport,
    path: Path,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None,
    reference: Scores | None,
) -> Scores:
    measured = scores(path, eval_x)
    data = path.read_bytes()
    variant.size = len(data)
    variant.transport_size = transport_size(data)
    variant.sparsity = weight_sparsity(data)
    variant.median_ms = measured.median_ms
    variant.p95_ms = measured.p95_ms
    if reference is not None:
        variant.top1_agreement = float(
            (measured.values.argmax(1) == reference.values.argmax(1)).mean()
        )
        variant.max_abs_diff = float(np.abs(measured.values - reference.values).max())
    if eval_y is not None:
        variant.accuracy = float((measured.values.argmax(1) == eval_y).mean())
    return measured


def _build_into(
    staging: Path,
    model: Path,
    *,
    signature: tuple[str, str],
    calibration: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None,
    min_accuracy: float | None,
    max_accuracy_drop: float | None,
    edgetpu: Path | None,
    progress: Progress,
    prune_percents: Sequence[float] = (),
    technique: str = "",
    teacher: Path | None = None,
) -> BuildReport:
    prefix = f"{technique}-" if technique else ""
    report = BuildReport(
        source=model.name,
        source_sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
        host=_host(),
        hardware_class=hardware_class(platform.machine(), edgetpu=False),
        samples_calibration=len(calibration),
        samples_eval=len(eval_x),
        labelled=eval_y is not None,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
    )
    judged_against: VariantReport | None = None
    reference: Scores | None = None
    if teacher is not None:
        progress(f"teacher: measuring {teacher.name} on {len(eval_x)} samples")
        judged_against = VariantReport("teacher", status="reference", tool=teacher.name)
        reference = _measure(judged_against, teacher, eval_x, eval_y, None)
        judged_against.top1_agreement, judged_against.max_abs_diff = 1.0, 0.0
        report.variants.append(judged_against)
        report.notes.append(
            f"teacher {teacher.name}: agreement and the accuracy drop are measured against it; "
            "its row is a reference, not a variant"
        )
    base_name = f"{prefix}float32"
    progress(f"{base_name}: measuring {model.name} on {len(eval_x)} samples")
    base = VariantReport(
        base_name, file=f"{base_name}.tflite", tool="the source model", technique=technique
    )
    shutil.copyfile(model, staging / base.file)
    source = staging / base.file
    if not inspect_model_file(model).signatures:
        report.notes.append(f"{model.name} has no signature: quantized with {SIGNATURE_KEY} added")
        source = staging / ".signed.tflite"
        source.write_bytes(add_signature(model.read_bytes()))
    measured_base = _measure(base, staging / base.file, eval_x, eval_y, reference)
    base.size_ratio = 1.0
    if reference is None:
        reference = measured_base
        base.top1_agreement, base.max_abs_diff = 1.0, 0.0
    report.variants.append(base)
    for kind, (recipe, calibrated) in _recipes().items():
        name = f"{prefix}{kind}"
        variant = VariantReport(
            name, file=f"{name}.tflite", tool=f"ai-edge-quantizer {kind}", technique=technique
        )
        report.variants.append(variant)
        progress(
            f"{name}: quantizing"
            + (f" ({len(calibration)} calibration samples)" if calibrated else "")
        )
        started = time.monotonic()
        try:
            _quantize(
                source,
                staging / variant.file,
                recipe,
                signature,
                calibration if calibrated else None,
            )
            variant.build_s = time.monotonic() - started
            progress(f"{name}: measuring")
            _measure(variant, staging / variant.file, eval_x, eval_y, reference)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
            variant.status, variant.reason = "failed", _short(exc)
            variant.file = ""
            (staging / f"{name}.tflite").unlink(missing_ok=True)
            progress(f"{name}: failed: {variant.reason}")
            continue
        variant.size_ratio = variant.size / base.size
    if source.name == ".signed.tflite":
        source.unlink()
    report.variants.append(
        _uint8_io_variant(staging, eval_x=eval_x, eval_y=eval_y, reference=reference,
                          base=base, progress=progress, prefix=prefix)
    )  # fmt: skip
    for percent in prune_percents:
        report.variants += _pruned_variants(
            staging, model, percent, signature=signature, calibration=calibration,
            eval_x=eval_x, eval_y=eval_y, reference=reference, base=base, progress=progress,
        )  # fmt: skip
    report.variants.append(_edgetpu_variant(staging, edgetpu, base, progress, prefix))
    for variant in report.variants:
        if technique and variant is not judged_against:
            variant.technique = technique
        _judge(variant, judged_against or base, min_accuracy, max_accuracy_drop)
        if judged_against is not None and variant.size:
            variant.size_ratio = variant.size / judged_against.size  # what distilling saved
    if judged_against is not None:
        report.notes.append(f"RATIO is to the teacher's size ({judged_against.size:,} bytes)")
    return report


UINT8_IO = "int8-uint8io"


def _uint8_io_variant(
    staging: Path,
    *,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None,
    reference: Scores,
    base: VariantReport,
    progress: Progress,
    prefix: str = "",
) -> VariantReport:
    """The int8 variant with uint8 inputs and outputs (fleet_server/optimize/uint8io.py): what
    Coral's pipelines feed, and what the Edge TPU variant is compiled from."""
    how = "int8 with uint8 inputs and outputs (QUANTIZE at each end)"
    name = f"{prefix}{UINT8_IO}"
    variant = VariantReport(name, file=f"{name}.tflite", tool=how)
    int8 = staging / f"{prefix}int8.tflite"
    if not int8.exists():
        variant.status, variant.file, variant.reason = "skipped", "", "int8 was not built"
        return variant
    progress(f"{name}: requantizing the int8 variant's inputs and outputs")
    try:
        (staging / variant.file).write_bytes(with_uint8_io(int8.read_bytes()))
        _measure(variant, staging / variant.file, eval_x, eval_y, reference)
    except Exception as exc:  # noqa: BLE001 - the others stand without it
        variant.status, variant.reason = "failed", _short(exc)
        (staging / variant.file).unlink(missing_ok=True)
        variant.file = ""
        return variant
    variant.size_ratio = variant.size / base.size
    return variant


PRUNED_MIN_AGREEMENT = 0.95  # a pruned variant below it is rejected, floors or not
PRUNED_NOTE = "dense on a device: same size and speed as unpruned; smaller in transport (zstd)"


def _pruned_variants(
    staging: Path,
    model: Path,
    percent: float,
    *,
    signature: tuple[str, str],
    calibration: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None,
    reference: Scores,
    base: VariantReport,
    progress: Progress,
) -> list[VariantReport]:
    """``model`` magnitude-pruned to ``percent`` % (fleet_server/optimize/prune.py), as it is
    and quantized to full int8 like the int8 variant."""
    tag = f"pruned{percent:g}"
    how = f"magnitude pruning of conv/FC weights to {percent:g}%"
    pruned = VariantReport(
        f"{tag}-float32", file=f"{tag}-float32.tflite", technique="pruned", tool=how
    )
    int8 = VariantReport(
        f"{tag}-int8", file=f"{tag}-int8.tflite", technique="pruned",
        tool=f"{how}, then ai-edge-quantizer int8",
    )  # fmt: skip
    signed = staging / f".{tag}-signed.tflite"
    try:
        for variant in (pruned, int8):
            progress(f"{variant.name}: {'pruning' if variant is pruned else 'quantizing'}")
            started = time.monotonic()
            try:
                if variant is pruned:
                    result = prune(model.read_bytes(), percent / 100)
                    (staging / pruned.file).write_bytes(result.model)
                    signed.write_bytes(add_signature(result.model))
                else:
                    if not signed.exists():
                        raise RuntimeError(f"{pruned.name} was not built")
                    recipe = _recipes()["int8"][0]
                    _quantize(signed, staging / int8.file, recipe, signature, calibration)
                variant.build_s = time.monotonic() - started
                _measure(variant, staging / variant.file, eval_x, eval_y, reference)
            except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
                variant.status, variant.reason = "failed", _short(exc)
                (staging / variant.file).unlink(missing_ok=True)
                variant.file = ""
                progress(f"{variant.name}: failed: {variant.reason}")
                continue
            variant.size_ratio = variant.size / base.size
            variant.reason = PRUNED_NOTE
            agreement = variant.top1_agreement
            if agreement is not None and agreement < PRUNED_MIN_AGREEMENT:
                # Dense on a device, it runs as fast as its unpruned twin: if it were pushed,
                # timing noise could make it the "fastest measured" variant.
                variant.status = "rejected"
                variant.reason = (
                    f"top-1 agreement with float32 {agreement:.1%} < {PRUNED_MIN_AGREEMENT:.0%}: "
                    "pruning without fine-tuning broke this model"
                )
    finally:
        signed.unlink(missing_ok=True)
    return [pruned, int8]


def _edgetpu_variant(
    staging: Path, supplied: Path | None, base: VariantReport, progress: Progress, prefix: str
) -> VariantReport:
    variant = VariantReport(f"{prefix}edgetpu", file=f"{prefix}edgetpu.tflite")
    uint8io = f"{prefix}{UINT8_IO}"
    target = staging / variant.file
    try:
        if supplied is not None:
            info = inspect_model_file(supplied)
            if not info.edgetpu:
                raise BadRequestError(f"{supplied.name} is not compiled for the Edge TPU")
            source = inspect_model_file(staging / base.file)
            if [t.shape for t in info.inputs] != [t.shape for t in source.inputs]:
                raise BadRequestError(
                    f"{supplied.name} takes {[t.shape for t in info.inputs]}, the float model "
                    f"{[t.shape for t in source.inputs]}: not a compilation of this model"
                )
            shutil.copyfile(supplied, target)
            variant.tool = f"supplied: {supplied.name}"
        elif shutil.which("edgetpu_compiler") and (staging / f"{uint8io}.tflite").exists():
            progress(f"{variant.name}: compiling the {uint8io} variant")
            compiled, version = _edgetpu_compile(staging / f"{uint8io}.tflite", staging)
            compiled.rename(target)
            variant.tool = version or "edgetpu_compiler"
            log = staging / f"{uint8io}_edgetpu.log"
            log.unlink(missing_ok=True)
        else:
            variant.status, variant.file = "skipped", ""
            variant.reason = (
                f"edgetpu_compiler is not on PATH; compile {uint8io}.tflite elsewhere and pass "
                "--edgetpu FILE"
            )
            return variant
    except Exception as exc:  # noqa: BLE001
        variant.status, variant.file, variant.reason = "failed", "", _short(exc)
        target.unlink(missing_ok=True)
        return variant
    variant.size = target.stat().st_size
    variant.size_ratio = variant.size / base.size
    # Without an Edge TPU here, its latency and accuracy are for the devices to measure.
    variant.reason = "not measured here (no Edge TPU); devices benchmark it"
    return variant


def _judge(
    variant: VariantReport,
    base: VariantReport,
    min_accuracy: float | None,
    max_drop: float | None,
) -> None:
    """Reject a variant under the accuracy floor, with the reason."""
    if variant.status != "ok" or variant.accuracy is None:
        return
    if min_accuracy is not None and variant.accuracy < min_accuracy:
        variant.status = "rejected"
        variant.reason = f"accuracy {variant.accuracy:.2%} < floor {min_accuracy:.2%}"
    elif (
        max_drop is not None
        and base.accuracy is not None
        and base.accuracy - variant.accuracy > max_drop + 1e-12
    ):
        variant.status = "rejected"
        variant.reason = (
            f"accuracy {variant.accuracy:.2%} is {(base.accuracy - variant.accuracy) * 100:.2f} "
            f"points below {base.name} (at most {max_drop * 100:g})"
        )


def _host() -> str:
    runtime = find_runtime()  # what scores() runs with
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, {runtime.name} {runtime.version}, 1 thread"
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {text[0] if text else ''}")[:300]
