"""Issue 7's target: the cascade on real labelled data (scikit-learn's digits, held-out half),
with the shipped int8 device model and float cloud model.

    python -m bench.bench_routing [--quick]

Prints the threshold curve (the same as `edgefleet routing evaluate`) and whether the
recommended threshold stays within 1 accuracy point of cloud only while sending at most 30%
of requests to the cloud. It takes a few seconds: --quick runs the same evaluation (it exists so
that every benchmark takes the flag), and the exit status is the command's: 1 when no threshold
is within 1 point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleet_server.admin_cli import main as edgefleet

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
LOCAL = DATA / "digits_local_int8.tflite"
CLOUD = DATA / "digits_cloud_float.tflite"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same run (it is quick)")
    parser.parse_args()
    args = ["routing", "evaluate", "--local", str(LOCAL), "--cloud", str(CLOUD)]
    return edgefleet([*args, "--data", "sklearn:digits"])


if __name__ == "__main__":
    sys.exit(main())
