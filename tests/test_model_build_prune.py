"""Pruning in `edgefleet model build` (issue 24 item 2): magnitude pruning of a real float
model's weights to a target sparsity, reported with its sparsity, transport size, on-device
size, latency and accuracy, and pushed with the other variants."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from fleet_server.optimize.build import PRUNED_NOTE, BuildReport
from fleet_server.optimize.prune import prune, transport_size, weight_sparsity
from fleet_server.routing.datasets import digits
from fleet_server.routing.evaluate import scores
from tests.harness import DATA, Server, run_cli

FLOAT = DATA / "digits_cloud_float.tflite"


def constants(model: bytes) -> dict[str, np.ndarray]:
    """Every float32 constant tensor by name."""
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    out = {}
    for tensor in m.subgraphs[0].tensors:
        data = m.buffers[tensor.buffer].data
        if tensor.type == schema.TensorType.FLOAT32 and data is not None and len(data):
            out[tensor.name.decode()] = np.frombuffer(bytes(data), "<f4")
    return out


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_pruning_zeroes_the_smallest_weights_and_nothing_else(sparsity: float) -> None:
    source = FLOAT.read_bytes()
    result = prune(source, sparsity)
    before, after = constants(source), constants(result.model)
    assert result.tensors >= 2 and result.sparsity == pytest.approx(sparsity, abs=0.001)
    assert weight_sparsity(result.model) == pytest.approx(result.sparsity)
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert len(changed) == result.tensors  # the FC weights; biases are as they were
    for name in changed:
        old, new = before[name], after[name]
        kept = new != 0
        assert np.array_equal(new[kept], old[kept])  # survivors untouched
        assert np.abs(old[~kept]).max() <= np.abs(old[kept]).min()  # the smallest went
    assert len(result.model) == len(source)  # dense: the same bytes on a device
    assert transport_size(result.model) < transport_size(source)
    x = digits().test_x[:50]
    assert scores_of(result.model, x).shape == (50, 10)  # it still runs


def scores_of(model: bytes, x: np.ndarray) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".tflite") as handle:
        handle.write(model)
        handle.flush()
        return scores(Path(handle.name), x).values


def test_nothing_to_prune_or_a_bad_sparsity_is_refused() -> None:
    with pytest.raises(ValueError, match="no float32 weights"):
        prune((DATA / "mobilenet_v1_0.25_128_quant.tflite").read_bytes(), 0.5)
    with pytest.raises(ValueError, match="outside"):
        prune(FLOAT.read_bytes(), 1.0)


@pytest.mark.slow
def test_build_with_prune_reports_each_number_and_push_takes_the_variants(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    out = tmp_path / "digits"
    built = run_cli(
        "edgefleet", "model", "build", str(FLOAT), "--calibration", "sklearn:digits",
        "--eval", "sklearn:digits", "--out", str(out), "--prune", "50", timeout=600,
    )  # fmt: skip
    report = BuildReport.from_json((out / "report.json").read_text())
    v = {variant.name: variant for variant in report.variants}
    base, int8 = v["float32"], v["int8"]
    pruned, pruned8 = v["pruned50-float32"], v["pruned50-int8"]
    for variant in (pruned, pruned8):
        assert variant.status == "ok" and variant.technique == "pruned", variant
        assert variant.reason == PRUNED_NOTE
        assert variant.accuracy is not None and variant.top1_agreement is not None
        assert variant.median_ms > 0 and variant.transport_size > 0
    assert pruned.sparsity == pytest.approx(0.5, abs=0.001)
    assert pruned8.sparsity is not None and pruned8.sparsity >= 0.5
    assert pruned.size == base.size and pruned8.size == int8.size  # dense on a device
    assert pruned.transport_size < 0.7 * base.transport_size
    assert pruned8.transport_size < int8.transport_size
    assert base.accuracy is not None and pruned.accuracy is not None
    assert base.accuracy - pruned.accuracy < 0.02  # 50 % of this model's weights cost little
    assert "pruned50-int8" in built.stdout and "ZSTD" in built.stdout
    server = server_factory(None)
    server.admin("models", "push", str(out), "--name", "digits", "--version", "1.0.0")
    listed = {m["variant"] for m in json.loads(server.admin("models", "list", "--json").stdout)}
    assert {"pruned50-float32", "pruned50-int8", "int8", "float32"} <= listed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "within (0, 100)"), ("100", "within (0, 100)"), ("50,50", "twice"),
     ("10,20,30,40,50", "at most 4"), ("half", "not a number")],
)  # fmt: skip
def test_bad_sparsities_are_refused_before_anything_runs(
    tmp_path: Path, value: str, message: str
) -> None:
    result = run_cli(
        "edgefleet", "model", "build", str(FLOAT), "--calibration", "sklearn:digits",
        "--out", str(tmp_path / "out"), "--prune", value, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
