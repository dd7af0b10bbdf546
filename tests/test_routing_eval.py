"""Cascade evaluation: the pure sweep and recommendation, and `edgefleet routing evaluate` on
the shipped digits models and scikit-learn's bundled digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fleet_server.routing.costs import UsageRow, summarize
from fleet_server.routing.evaluate import recommend, sweep, thresholds
from fleet_server.routing.prices import Prices
from tests.harness import run_cli

DATA = Path(__file__).parent / "data"
LOCAL = DATA / "digits_local_int8.tflite"
CLOUD = DATA / "digits_cloud_float.tflite"

SCORES = hnp.arrays(np.float32, (40, 4), elements=st.floats(0, 1, width=32))


@given(SCORES, SCORES, hnp.arrays(np.int64, 40, elements=st.integers(0, 3)))
def test_the_sweep_runs_from_local_only_to_cloud_only(
    local: np.ndarray, cloud: np.ndarray, labels: np.ndarray
) -> None:
    rows = sweep(local, cloud, labels, thresholds(), local_cost=1e-6, cloud_cost=0.002)
    first, last = rows[0], rows[-1]
    assert first.cloud_share == 0
    assert first.accuracy == pytest.approx(float((local.argmax(1) == labels).mean()))
    assert last.cloud_share == 1
    assert last.accuracy == pytest.approx(float((cloud.argmax(1) == labels).mean()))
    assert last.cost_per_million == pytest.approx(2000)  # no local run in cloud only
    shares = [r.cloud_share for r in rows]
    assert shares == sorted(shares)
    best = recommend(rows, last.accuracy, 0.01)
    assert best is not None  # cloud only itself always qualifies
    assert best.accuracy >= last.accuracy - 0.01 - 1e-9
    assert not any(
        r.accuracy >= last.accuracy - 0.01 and r.cost_per_million < best.cost_per_million
        for r in rows
    )


def test_nothing_is_recommended_when_no_threshold_is_accurate_enough() -> None:
    rows = sweep(
        np.eye(3, dtype=np.float32),
        np.eye(3, dtype=np.float32),
        np.array([1, 2, 0]),
        [0.0, 1.0],
        local_cost=0,
        cloud_cost=1,
    )
    assert recommend(rows, 1.0, 0.01) is None


@pytest.mark.slow
def test_evaluate_on_the_shipped_digits_recommends_a_cheap_threshold_near_cloud_accuracy() -> None:
    result = run_cli(
        "edgefleet", "routing", "evaluate", "--local", str(LOCAL), "--cloud", str(CLOUD),
        "--data", "sklearn:digits", "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["samples"] == 901
    rows = report["rows"]
    cloud_only, local_only = rows[-1], rows[0]
    assert local_only["accuracy"] < cloud_only["accuracy"]  # the small model is worse alone
    best = report["recommended"]
    assert best["accuracy"] >= cloud_only["accuracy"] - 0.01
    assert best["cloud_share"] <= 0.30
    assert best["cost_per_million"] < 0.3 * cloud_only["cost_per_million"]

    table = run_cli(
        "edgefleet", "routing", "evaluate", "--local", str(LOCAL), "--cloud", str(CLOUD),
        "--data", "sklearn:digits",
    ).stdout  # fmt: skip
    assert f"recommended: cascade threshold {best['threshold']:.2f}" in table
    assert "<- recommended" in table


@pytest.mark.slow
def test_bad_evaluation_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, x=np.zeros((5, 8, 8), np.float32), y=np.zeros(5, np.int64))
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.zeros((5, 64), np.float32), y=np.zeros(4, np.int64))
    not_a_model = tmp_path / "m.tflite"
    not_a_model.write_bytes(b"nope")
    for data, local, expected in (
        ("sklearn:iris", LOCAL, "unknown dataset 'sklearn:iris'"),
        (str(tmp_path / "missing.npz"), LOCAL, "cannot read"),
        (str(wrong_shape), LOCAL, "the data's samples are (8, 8); digits_local_int8.tflite"),
        (str(unlabelled), LOCAL, "must have one label per sample"),
        ("sklearn:digits", not_a_model, "cannot load"),
    ):
        result = run_cli(
            "edgefleet", "routing", "evaluate", "--local", str(local), "--cloud", str(CLOUD),
            "--data", data, check=False,
        )  # fmt: skip
        assert result.returncode == 1, result
        assert expected in result.stderr, result.stderr


def test_costs_add_up_energy_and_cloud_per_group_and_policy() -> None:
    prices = Prices(cloud_per_request=0.002, energy_per_kwh=0.36, device_power_w=10,
                    power_by_class={"aarch64+edgetpu": 2})  # fmt: skip

    def usage(device: str, policy: str, hw: str, **counts: float) -> UsageRow:
        fields = {"served": 0, "local_runs": 0, "local_ms": 0.0, "cloud_requests": 0,
                  "cloud_cost": 0.0} | counts  # fmt: skip
        return UsageRow(device, "m", policy, "lab", hw, **fields)  # type: ignore[arg-type]

    rows = summarize(
        [
            # 1,000 runs of 100 ms at 10 W: 1e-3 kWh... in all, 0.36 USD/kWh -> 1e-5 USD
            usage("a", "local", "x86_64", served=1000, local_runs=1000, local_ms=100_000.0),
            # the same time at 2 W, and 100 cloud requests paid 0.2 USD
            usage(
                "b",
                "cascade",
                "aarch64+edgetpu",
                served=1000,
                local_runs=1000,
                local_ms=100_000.0,
                cloud_requests=100,
                cloud_cost=0.2,
            ),
            usage("c", "cloud", "x86_64", served=50, cloud_requests=50, cloud_cost=0.1),
        ],
        prices,
    )
    by_policy = {r.policy: r for r in rows}
    local, cascade, cloud = by_policy["local"], by_policy["cascade"], by_policy["cloud"]
    assert local.cost_usd == pytest.approx(100 * 10 / 3.6e6 * 0.36)
    assert local.per_million == pytest.approx(local.cost_usd / 1000 * 1e6)
    assert cascade.cost_usd == pytest.approx(100 * 2 / 3.6e6 * 0.36 + 0.2)
    assert cascade.cloud_share == pytest.approx(0.1)
    assert cascade.saving_vs_cloud == pytest.approx(1 - cascade.per_million / 2000)
    assert cloud.local_only_per_million is None
    assert cloud.per_million == pytest.approx(2000)
