"""``edgefleet routing ...``: policies and prices on the server, and cascade evaluation (which
runs here, no server needed)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError
from fleet_server.routing.datasets import load
from fleet_server.routing.evaluate import recommend, scores, sweep, thresholds
from fleet_server.routing.prices import Prices

__all__ = ["add_costs_parser", "add_parser"]


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
        help="cloud routing: policies, prices, cascade evaluation",
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

    set_ = routing_sub.add_parser(
        "set",
        help="set a model's routing policy (for the devices matching --selector)",
        description="local: the device's model only; local_then_cloud: the cloud when the "
        "local model is not loaded, fails, its queue is full or it misses --latency-budget; "
        "cascade: the cloud when the local top score is under --threshold; cloud: the cloud "
        "only. Devices get it at their next check-in; their agent.toml may override it.",
    )
    set_.add_argument("name", help="model name")
    set_.add_argument("policy", choices=("local", "local_then_cloud", "cascade", "cloud"))
    set_.add_argument("--selector", action="append", metavar="KEY=VALUE", help="only these")
    set_.add_argument("--threshold", type=_positive, default=0.0, help="cascade threshold")
    set_.add_argument("--latency-budget", type=_positive, default=0.0, help="ms (local_then_cloud)")
    set_.add_argument("--cloud-model", default="", help="its name on the cloud endpoint")
    set_.add_argument(
        "--max-per-minute",
        type=common.whole(0, 10**9),
        help="cloud requests per device per minute (0: none)",
    )
    set_.add_argument(
        "--max-spend-per-day", type=_positive, help="USD per device per day (0: no cloud)"
    )
    set_.add_argument("--json", action="store_true")
    set_.set_defaults(func=_cmd_set)

    list_ = routing_sub.add_parser("list", help="routing policies")
    list_.add_argument("--model", default="")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=_cmd_list)

    unset = routing_sub.add_parser("unset", help="remove a routing policy")
    unset.add_argument("name", help="model name")
    unset.add_argument("--selector", action="append", metavar="KEY=VALUE")
    unset.set_defaults(func=_cmd_unset)

    prices = routing_sub.add_parser(
        "prices",
        help="show or set the price table (cloud price, energy price, device power)",
    )
    prices.add_argument("--cloud-per-request", type=_positive, help="USD")
    prices.add_argument("--energy-per-kwh", type=_positive, help="USD")
    prices.add_argument("--device-power", type=_positive, help="watts while inferring")
    prices.add_argument(
        "--power",
        action="append",
        metavar="CLASS=WATTS",
        help="watts of one hardware class (e.g. aarch64+edgetpu=4, x86_64=35); repeatable",
    )
    prices.add_argument("--json", action="store_true")
    prices.set_defaults(func=_cmd_prices)


def add_costs_parser(sub: Any) -> None:
    """Register ``edgefleet costs``."""
    costs = sub.add_parser(
        "costs",
        help="inference cost per million requests by model, device group and policy",
        description="From device telemetry (added up across agent restarts) and the price "
        "table ('edgefleet routing prices'): what requests cost as served, and what they "
        "would cost local only (device energy) or cloud only (the cloud price); then today's "
        "cloud spend against each routing policy's daily budget per device.",
    )
    costs.add_argument("--by", default="", metavar="LABEL", help="group devices by this label")
    costs.add_argument("--model", default="", help="only this model")
    costs.add_argument("--json", action="store_true")
    costs.set_defaults(func=_cmd_costs)


def _cmd_costs(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    report = common.admin(args).call(
        "GetCosts", pb.GetCostsRequest(group_by=args.by, model_name=args.model)
    )
    if args.json:
        print(json.dumps(common.as_dict(report), indent=2))
        return 0
    if not report.rows:
        print("no inference reported yet (devices report it in their telemetry)")
        return 0
    group = args.by.upper() or "GROUP"
    print(
        f"{'MODEL':16} {group:12} {'POLICY':16} {'REQUESTS':>9} {'CLOUD':>6} "
        f"{'USD/1M':>10} {'LOCAL ONLY':>10} {'CLOUD ONLY':>10} {'SAVED':>6}"
    )
    for r in report.rows:
        local_only = (
            f"{r.local_only_per_million:10.4f}" if r.HasField("local_only_per_million") else "-"
        )
        share = r.cloud_requests / r.served if r.served else 0.0
        saved = 1 - r.per_million / r.cloud_only_per_million if r.cloud_only_per_million else 0
        print(
            f"{r.model_name:16} {(r.group or '*'):12} {r.policy:16} {r.served:9d} "
            f"{share:6.1%} {r.per_million:10.4f} {local_only:>10} "
            f"{r.cloud_only_per_million:10.2f} {saved:6.1%}"
        )
    p = report.prices
    print(
        f"prices: cloud {p.cloud_per_request:g} USD/request; local {p.device_power_w:g} W "
        f"at {p.energy_per_kwh:g} USD/kWh"
    )
    if report.budgets:
        print("\ncloud spend today (UTC) against each policy's daily budget per device:")
        print(f"{'MODEL':16} {'POLICY':16} {'SELECTOR':16} {'USD/DAY':>8} {'DEVICES':>7} "
              f"{'SPENT USD':>10} {'USED':>6} {'AT BUDGET':>9}")  # fmt: skip
        for b in report.budgets:
            selector = ",".join(f"{k}={v}" for k, v in sorted(b.selector.items())) or "*"
            if b.HasField("per_device_usd"):
                limit = f"{b.per_device_usd:8g}"
                total = b.per_device_usd * b.devices
                used = f"{b.spent_usd / total:6.1%}" if total else "100.0%"
            else:
                limit, used = f"{'none':>8}", f"{'-':>6}"
            print(f"{b.model_name:16} {b.policy:16} {selector:16} {limit} {b.devices:7d} "
                  f"{b.spent_usd:10.4f} {used} {b.exhausted:9d}")  # fmt: skip
    return 0


def _print_policies(policies: Any) -> None:
    if not policies:
        print("no routing policies: every model is served locally only")
        return
    print(f"{'MODEL':20} {'POLICY':17} {'THRESHOLD':>9} {'BUDGET MS':>9}  LIMITS / SELECTOR")
    for p in policies:
        limits = []
        if p.HasField("max_per_minute"):
            limits.append(f"{p.max_per_minute}/min")
        if p.HasField("max_spend_per_day"):
            limits.append(f"{p.max_spend_per_day:g} USD/day")
        selector = ",".join(f"{k}={v}" for k, v in sorted(p.selector.items())) or "*"
        print(
            f"{p.model_name:20} {p.policy:17} {p.threshold:9.2f} {p.latency_budget_ms:9.1f}  "
            f"{' '.join(limits) or '-'} / {selector}"
        )


def _cmd_set(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    request = pb.RoutingPolicyInfo(
        model_name=args.name,
        selector=common.pairs(args.selector, "selector"),
        policy=args.policy,
        threshold=args.threshold,
        latency_budget_ms=args.latency_budget,
        cloud_model=args.cloud_model,
    )
    if args.max_per_minute is not None:
        if args.max_per_minute < 0:
            raise BadRequestError("--max-per-minute must not be negative")
        request.max_per_minute = args.max_per_minute
    if args.max_spend_per_day is not None:
        request.max_spend_per_day = args.max_spend_per_day
    policy = common.admin(args).call("SetRoutingPolicy", request)
    if args.json:
        print(json.dumps(common.as_dict(policy), indent=2))
    else:
        _print_policies([policy])
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    response = common.admin(args).call(
        "ListRoutingPolicies", pb.ListRoutingPoliciesRequest(model_name=args.model)
    )
    if args.json:
        print(json.dumps([common.as_dict(p) for p in response.policies], indent=2))
    else:
        _print_policies(response.policies)
    return 0


def _cmd_unset(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    request = pb.DeleteRoutingPolicyRequest(
        model_name=args.name, selector=common.pairs(args.selector, "selector")
    )
    _print_policies(common.admin(args).call("DeleteRoutingPolicy", request).policies)
    return 0


def _cmd_prices(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    client = common.admin(args)
    table = client.call("GetPrices", pb.GetPricesRequest())
    changes = (args.cloud_per_request, args.energy_per_kwh, args.device_power, args.power)
    if any(c is not None for c in changes):
        if args.cloud_per_request is not None:
            table.cloud_per_request = args.cloud_per_request
        if args.energy_per_kwh is not None:
            table.energy_per_kwh = args.energy_per_kwh
        if args.device_power is not None:
            table.device_power_w = args.device_power
        for cls, watts in common.pairs(args.power, "power").items():
            try:
                table.power_by_class[cls] = float(watts)
            except ValueError as exc:
                raise BadRequestError(f"--power {cls}={watts}: watts must be a number") from exc
        table = client.call("SetPrices", table)
    if args.json:
        print(json.dumps(common.as_dict(table), indent=2))
        return 0
    print(f"cloud: {table.cloud_per_request:g} USD per request")
    print(
        f"local: {table.energy_per_kwh:g} USD per kWh, {table.device_power_w:g} W while "
        "inferring" + "".join(f"; {k}: {v:g} W" for k, v in sorted(table.power_by_class.items()))
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    data = load(args.data)
    prices = Prices(
        cloud_per_request=args.cloud_cost,
        energy_per_kwh=args.energy_price,
        device_power_w=args.device_power,
    )
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
    saving = (
        1 - best.cost_per_million / cloud_only.cost_per_million
        if cloud_only.cost_per_million
        else 0.0
    )
    print(
        f"recommended: cascade threshold {best.threshold:.2f}: {best.accuracy:.2%} "
        f"({(cloud_only.accuracy - best.accuracy) * 100:.2f} points below cloud only), "
        f"{best.cloud_share:.1%} of requests to the cloud, {saving:.0%} cheaper than cloud only"
    )
    return 0
