"""``edgefleet-agent``: run the daemon, classify an image once, check a config, probe hardware."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent import __version__
from agent.config import load_config
from agent.errors import AgentError, ConfigError
from agent.inference.engine import load_model
from agent.inference.preprocess import image_to_tensor, load_image, read_labels, top_k

__all__ = ["main"]

log = logging.getLogger("agent")
PROG = "edgefleet-agent"


def _setup_logging(level: str) -> None:
    # Under systemd, journald adds its own timestamps; elsewhere humans want them.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent  # noqa: PLC0415 - keeps `predict` start-up light

    config = load_config(args.config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Agent(config).run(stop)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: OK (state_dir={config.agent.state_dir}, server={config.server.address})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.top_k > 1000:
        raise ConfigError("--top-k must be within 1..1000")
    model = load_model(args.model, args.model.stem, "local", num_threads=args.threads, workers=1)
    if len(model.info.inputs) != 1:
        raise AgentError(
            f"{args.model.name} has {len(model.info.inputs)} inputs; predict takes one image input"
        )
    tensor = model.info.inputs[0]
    data = image_to_tensor(load_image(args.input), tensor, mean=args.mean, std=args.std)
    output = model.infer([data])[0]
    labels = read_labels(args.labels) if args.labels else None
    results = top_k(output, model.info.outputs[0], args.top_k, labels)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(args.model),
                    "input": str(args.input),
                    "top_k": [
                        {"label": r.label, "index": r.index, "score": round(r.score, 6)}
                        for r in results
                    ],
                }
            )
        )
    else:
        for r in results:
            print(f"{r.score:8.4f}  {r.index:5d}  {r.label}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict  # noqa: PLC0415

    from agent.probe import probe  # noqa: PLC0415

    caps = MessageToDict(probe(args.state_dir), preserving_proto_field_name=True)
    if args.json:
        print(json.dumps(caps, sort_keys=True))
    else:
        for key, value in sorted(caps.items()):
            print(f"{key:16s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="EdgeFleet edge agent: serves signed models locally."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", type=Path, required=True, help="agent TOML config file")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(func=_cmd_check_config)

    predict = sub.add_parser(
        "predict",
        help="classify one image with a .tflite model, locally",
        description="Resize and encode an image per the model's input tensor (uint8, int8 or "
        "float; any size), run the model on the CPU and print the top-k classes.",
    )
    predict.add_argument("model", type=Path, help="a classification .tflite model")
    predict.add_argument("input", type=Path, help="an image file (BMP, PNG, JPEG, ...)")
    predict.add_argument("--labels", type=Path, help="labels file, line i = class i")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.add_argument(
        "--mean", type=float, help="pixel mean to subtract (default: from the input tensor)"
    )
    predict.add_argument(
        "--std", type=float, help="pixel scale to divide by (default: from the input tensor)"
    )
    predict.add_argument("--threads", type=int, default=1, choices=range(1, 65), metavar="N")
    predict.set_defaults(func=_cmd_predict)

    probe_cmd = sub.add_parser("probe", help="print this device's capabilities")
    probe_cmd.add_argument("--json", action="store_true")
    probe_cmd.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgefleet-agent"))
    probe_cmd.set_defaults(func=_cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except AgentError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
