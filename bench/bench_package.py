"""The agent's package: installed size per component and the agent's memory, the lean package
against the environment it replaced (issue 23), built and measured in one run.

    python -m bench.bench_package [--quick]

- **before**: the agent's environment as its package carried it before issue 23: a venv on
  Debian's ``/usr/bin/python3`` with ``pip install edgefleet[agent]`` from this checkout's
  wheel (numpy and Pillow wheels, pip, setuptools, the server's code, LiteRT whole, nothing
  stripped).
- **lean**: the bookworm amd64 agent package that ``make deb`` builds, unpacked with
  ``dpkg-deb -x``; it runs on Debian's python3-numpy and python3-pil, which it depends on.

Sizes: every file of the environment (bytecode included), attributed to the distribution whose
RECORD names its top-level folder. Memory: each environment's interpreter runs the same agent
(``bench/agent_process.py``: two models from its store, its server unreachable) from a folder
without this checkout (``-P``), natively on this machine; VmRSS after 200 requests. The arm64
package is not measured here: under qemu-user the emulator's own memory would be counted.
--quick: 20 requests (a check that every part still runs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bench.bench_inference import agent_start
from bench.processes import Children, run_folder
from tests.harness import REPO

SYSTEM_PYTHON = "/usr/bin/python3"
TIMEOUT_S = 900


def build_before(children: Children) -> Path:
    """The pre-issue-23 environment: a venv with pip install of the agent's extra."""
    wheels = children.folder / "wheel"
    children.run("wheel", [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                           str(wheels), str(REPO)], timeout=TIMEOUT_S)  # fmt: skip
    (wheel,) = wheels.glob("edgefleet-*.whl")
    venv = children.folder / "before"
    children.run("venv", [SYSTEM_PYTHON, "-m", "venv", str(venv)], timeout=TIMEOUT_S)
    children.run("pip-install", [str(venv / "bin/pip"), "install", "--quiet", f"{wheel}[agent]"],
                 timeout=TIMEOUT_S)  # fmt: skip
    return venv


def build_lean(children: Children) -> Path:
    """The bookworm amd64 agent package, unpacked; its environment's folder."""
    out = children.folder / "debs"
    children.run("build-deb", [sys.executable, str(REPO / "scripts/build_deb.py"), "--out",
                               str(out), "--package", "agent", "--dist", "bookworm", "--arch",
                               "amd64"], timeout=TIMEOUT_S)  # fmt: skip
    (deb,) = out.glob("edgefleet-agent_*_amd64.deb")
    root = children.folder / "lean-root"
    children.run("unpack", ["dpkg-deb", "-x", str(deb), str(root)], timeout=TIMEOUT_S)
    return root / "opt/edgefleet/agent"


def sizes(env: Path) -> dict[str, int]:
    """Bytes per distribution (its RECORD's top-level names), the rest as "other"."""
    (site,) = (env / "lib").glob("python3*/site-packages")
    owner: dict[str, str] = {}
    for record in site.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-", 1)[0].lower().replace("_", "-")
        for line in record.read_text(encoding="utf-8").splitlines():
            top = line.split(",", 1)[0].split("/", 1)[0]
            if top and not top.endswith((".dist-info", "..")):
                owner.setdefault(top.removesuffix(".py").split(".", 1)[0], name)
    totals: dict[str, int] = defaultdict(int)
    for path in env.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        relative = path.relative_to(site).parts if path.is_relative_to(site) else ()
        top = relative[0] if relative else ""
        if top.endswith(".dist-info"):
            name = top.split("-", 1)[0].lower().replace("_", "-")
        else:
            name = owner.get(top.removesuffix(".py").split(".", 1)[0], "other")
        totals[name] += path.stat().st_size
    return dict(totals)


def serving_rss(children: Children, env: Path, name: str, requests: int) -> float:
    """The agent run by ``env``'s interpreter, outside this checkout (``-P``): its VmRSS in MB
    after ``requests`` requests."""
    python = [str(env / "bin/python3"), "-P"]
    where = subprocess.run(
        [*python, "-c", "import agent, numpy; print(agent.__file__, numpy.__file__)"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(env)), f"{name} would run {where[0]}, not its own agent"
    print(f"{name}: numpy from {where[1]}", file=sys.stderr)
    _first, rss_mb, _threads = agent_start(children, python=python, name=name, requests=requests)
    return rss_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 requests")
    args = parser.parse_args()
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("dpkg-deb") is None:
        print("bench_package needs Debian's python3 (with python3-venv, python3-numpy, "
              "python3-pil) and dpkg-deb", file=sys.stderr)  # fmt: skip
        return 1
    requests = 20 if args.quick else 200
    with run_folder("bench-package") as children:
        envs = {"before": build_before(children), "lean": build_lean(children)}
        measured = {name: sizes(env) for name, env in envs.items()}
        rss = {name: serving_rss(children, env, name, requests) for name, env in envs.items()}
    names = sorted(set(measured["before"]) | set(measured["lean"]),
                   key=lambda n: -measured["before"].get(n, 0))  # fmt: skip
    print("| component | before (MB) | lean (MB) |")
    print("|---|---|---|")
    for name in names:
        before, lean = measured["before"].get(name, 0), measured["lean"].get(name, 0)
        if max(before, lean) >= 256 * 1024:
            print(f"| {name} | {before / 1e6:.1f} | {lean / 1e6:.1f} |")
    total_before, total_lean = sum(measured["before"].values()), sum(measured["lean"].values())
    print(f"| **total** | **{total_before / 1e6:.1f}** | **{total_lean / 1e6:.1f}** "
          f"({total_lean / total_before:.0%}) |")  # fmt: skip
    print(f"agent RSS, 2 models, after {requests} requests: before {rss['before']:.1f} MB, "
          f"lean {rss['lean']:.1f} MB ({rss['lean'] / rss['before']:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
