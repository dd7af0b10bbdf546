"""Issue 7's target: the cascade on real labelled data (scikit-learn's digits, held-out half),
with the shipped int8 device model and float cloud model.

    python -m bench.bench_routing

Prints the threshold curve (the same as `edgefleet routing evaluate`) and whether the
recommended threshold stays within 1 accuracy point of cloud only while sending at most 30%
of requests to the cloud.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleet_server.admin_cli import main as edgefleet

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
LOCAL = DATA / "digits_local_int8.tflite"
CLOUD = DATA / "digits_cloud_float.tflite"


def main() -> int:
    args = ["routing", "evaluate", "--local", str(LOCAL), "--cloud", str(CLOUD)]
    return edgefleet([*args, "--data", "sklearn:digits"])


if __name__ == "__main__":
    sys.exit(main())
