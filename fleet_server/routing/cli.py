"""``edgefleet routing ...``: cascade evaluation (runs here, no server needed)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fleet_server.routing.datasets import load
from fleet_server.routing.evaluate import Prices, recommend, scores, sweep, thresholds

__all__ = ["add_parser"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def add_parser(sub: Any) -> None:
    """Register the ``routing`` command group."""
    routing = sub.add_parser(
        "routing",
        help="cloud routing: evaluate a cascade",
        description="A cascade answers from the device's model and asks the cloud model only "
        "when the local top score is under a threshold.",
    )
    routing_sub = routing.add_subparsers(dest="action", required=True)
    evaluate = routing_sub.add_parser(
        "evaluate",
        help="sweep the cascade threshold on labelled data and recommend one",
        description="Runs both models on every held-out sample (here, with LiteRT) and prints, "
        "per threshold, the accuracy, the share sent to the cloud and the cost per million "
        "requests; recommends the cheapest threshold within --max-drop of the cloud model's "
        "accuracy.",
    )
    evaluate.add_argument("--local", type=Path, required=True, help="the device's .tflite")
    evaluate.add_argument("--cloud", type=Path, required=True, help="the cloud's .tflite")
    evaluate.add_argument(
        "--data",
        required=True,
        help="sklearn:digits (scikit-learn's bundled digits, held-out half) or an .npz with "
        "arrays x (samples) and y (integer labels)",
    )
    evaluate.add_argument(
        "--max-drop",
        type=_positive,
        default=1.0,
        help="accuracy points below cloud-only the recommendation may lose (default 1)",
    )
    evaluate.add_argument(
        "--cloud-cost",
        type=_positive,
        default=Prices.cloud_per_request,
        help=f"USD per cloud request (default {Prices.cloud_per_request})",
    )
    evaluate.add_argument(
        "--device-power",
        type=_positive,
        default=Prices.device_power_w,
        help=f"device watts while inferring (default {Prices.device_power_w:g})",
    )
    evaluate.add_argument(
        "--energy-price",
        type=_positive,
        default=Prices.energy_per_kwh,
        help=f"USD per kWh (default {Prices.energy_per_kwh})",
    )
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    data = load(args.data)
    prices = Prices(args.cloud_cost, args.device_power, args.energy_price)
    local = scores(args.local, data.test_x)
    cloud = scores(args.cloud, data.test_x)
    local_cost = prices.local_per_request(local.median_ms)
    rows = sweep(
        local.values,
        cloud.values,
        data.test_y,
        thresholds(),
        local_cost=local_cost,
        cloud_cost=prices.cloud_per_request,
    )
    cloud_only, local_only = rows[-1], rows[0]
    best = recommend(rows, cloud_only.accuracy, args.max_drop / 100)
    if args.json:
        out: dict[str, Any] = {
            "data": data.name,
            "samples": len(data.test_y),
            "local_median_ms": local.median_ms,
            "cloud_median_ms": cloud.median_ms,
            "rows": [asdict(r) for r in rows],
            "recommended": asdict(best) if best else None,
        }
        print(json.dumps(out, indent=2))
        return 0 if best else 1
    print(
        f"{data.name}: {len(data.test_y)} labelled samples; local {args.local.name} "
        f"({local.median_ms:.3f} ms here), cloud {args.cloud.name}"
    )
    print(f"{'THRESHOLD':>9} {'ACCURACY':>8} {'TO CLOUD':>8} {'USD/1M REQ':>11}")
    for r in rows:
        mark = " <- recommended" if r is best else ""
        print(
            f"{r.threshold:9.2f} {r.accuracy:8.2%} {r.cloud_share:8.1%} "
            f"{r.cost_per_million:11.4f}{mark}"
        )
    print(
        f"local only {local_only.accuracy:.2%} at {local_only.cost_per_million:.4f} USD/1M; "
        f"cloud only {cloud_only.accuracy:.2%} at {cloud_only.cost_per_million:.2f} USD/1M"
    )
    if best is None:
        print(f"no threshold is within {args.max_drop:g} points of cloud-only accuracy")
        return 1
    saving = 1 - best.cost_per_million / cloud_only.cost_per_million
    print(
        f"recommended: cascade threshold {best.threshold:.2f}: {best.accuracy:.2%} "
        f"({(cloud_only.accuracy - best.accuracy) * 100:.2f} points below cloud only), "
        f"{best.cloud_share:.1%} of requests to the cloud, {saving:.0%} cheaper than cloud only"
    )
    return 0
