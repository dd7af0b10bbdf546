"""Issue 8's target: `edgefleet model build` on the shipped float digits model with
scikit-learn's digits, and whether full int8 is at most 30% of float32's size, at most 1 point
less accurate, and not slower than float32 on this host.

    python -m bench.bench_optimize [--quick]

Exits 1 when the target is missed. It takes a few seconds: --quick runs the same build and only
reports the target (the speed comparison is at the mercy of a busy machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from fleet_server.optimize.build import build
from fleet_server.routing.datasets import digits

MODEL = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits_cloud_float.tflite"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="report the target, do not assert it")
    args = parser.parse_args()
    data = digits()
    with tempfile.TemporaryDirectory() as folder:
        report = build(
            MODEL,
            calibration=data.train_x,
            eval_x=data.test_x,
            eval_y=data.test_y,
            out=Path(folder) / "build",
        )
    print(f"{MODEL.name} on {report.host}, {report.samples_eval} held-out samples")
    print(report.table(), end="")
    by_name = {v.name: v for v in report.variants}
    base, full = by_name["float32"], by_name["int8"]
    if full.status != "ok" or full.accuracy is None or base.accuracy is None:
        print(f"int8 was not built: {full.reason}")
        return 1
    drop = (base.accuracy - full.accuracy) * 100
    met = full.size_ratio <= 0.30 and drop <= 1.0 and full.median_ms <= base.median_ms
    print(
        f"int8 (full integer): {full.size_ratio:.0%} of float32's size, "
        f"{drop:.2f} points less accurate, "
        f"{base.median_ms / full.median_ms:.2f}x float32's speed: target "
        + ("met" if met else "missed" + (" (not asserted with --quick)" if args.quick else ""))
    )
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
