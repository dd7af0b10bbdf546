"""``edgefleet-agent``: run the daemon, run a model once on an image, check a config, probe
hardware, ask the running agent how it stands and run a model on it (``status``, ``infer``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import queue
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from agent import __version__
from agent.config import AgentConfig, ApiSection, load_config
from agent.errors import AgentError, ConfigError, SocketError, UsageError
from agent.ports import EXIT_PORT_IN_USE, PortInUseError
from agent.systemd import setup_logging
from agent.terminal import printable

__all__ = ["main"]

log = logging.getLogger("agent")
PROG = "edgefleet-agent"


def _cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    stops: queue.SimpleQueue[int] = queue.SimpleQueue()  # SIGTERM, SIGINT for the stopper
    reload: list[Callable[[], None]] = []  # the agent's, once it exists
    early_hup: list[bool] = []

    # The handlers only queue or set a flag: the next signal runs a handler again inside the
    # running one, and a storm nested in logging or in Event.set overflowed the stack.
    # SimpleQueue.put may be re-entered; the stopper thread does the rest.
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stops.empty():  # one is enough: a storm does not grow the queue
            stops.put(signum)

    def stopper() -> None:
        log.info("received %s; stopping", signal.Signals(stops.get()).name)
        stop.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        if reload:
            reload[0]()
        elif not early_hup:
            early_hup.append(True)

    # First of all: SIGHUP's default action ends the process, which systemd takes for a clean
    # exit and does not restart. A SIGHUP before the agent exists is a reload once it does.
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=stopper, name="signals", daemon=True).start()
    from agent.daemon import Agent  # noqa: PLC0415 - keeps `predict` start-up light

    config = load_config(args.config)
    try:
        agent = Agent(config, config_path=args.config)
    except (OSError, sqlite3.Error) as exc:
        # The state dir (models, journal, spool) cannot be created or written: one line.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AgentError(
            f"cannot use the state dir {config.agent.state_dir}: {reason}"
            + (f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else "")
            + "; it must be a folder the agent's user can write"
        ) from exc
    reload.append(agent.request_reload)
    if early_hup:
        agent.request_reload()
    try:
        agent.run(stop)
    finally:
        # Stopped: later signals change nothing. Ignored, they also stay so while the
        # interpreter ends (it restores SIG_DFL for handled ones, and a SIGTERM then kills).
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from agent.identity import Identity  # noqa: PLC0415 - keeps `predict` start-up light

    config = load_config(args.config)
    # The daemon serves its models whatever is wrong here (and says so in its log); this is
    # where a missing file is an error. Once enrolled, the token and CA are not needed.
    reads: list[Callable[[], object]] = [config.cloud_token, config.cloud_ca]
    if Identity.path(config.agent.state_dir).exists():
        reads += [config.enrollment_token, config.fleet_ca]
    else:
        reads.append(config.enrollment_inputs)
    errors = []
    for read in reads:
        try:
            read()
        except ConfigError as exc:
            errors.append(str(exc))
    errors += _service_problems(config, args.config, args.user)
    for error in errors:
        print(f"{PROG}: error: {args.config}: {error}", file=sys.stderr)
    if errors:
        return 1
    for warning in config.warnings():
        print(f"{PROG}: warning: {args.config}: {warning}", file=sys.stderr)
    print(f"{args.config}: OK (state_dir={config.agent.state_dir}, server={config.server.address})")
    return 0


def _service_problems(config: AgentConfig, path: Path, user: str | None) -> list[str]:
    """What would stop ``run``: files the service's ``user`` cannot read, a state dir it cannot
    write, and ports another process holds (not this config's running agent: its own)."""
    from agent.ports import access_problem, held_by_another, held_by_itself  # noqa: PLC0415

    problems = []
    if user:
        server, cloud = config.server, config.cloud
        files = [
            path,
            server.enrollment_token_file,
            server.ca_file,
            cloud.token_file,
            cloud.ca_file,
        ]
        for file in (f for f in files if f is not None):
            problems.append(access_problem(Path(file), user))
        state = Path(config.agent.state_dir)
        while not state.exists() and state.parent != state:
            state = state.parent  # it creates what is missing below the first that exists
        problems.append(access_problem(state, user, write=True))
    api = config.api
    for what, address in (("api.listen", api.listen), ("api.rest_listen", api.rest_listen),
                          ("api.metrics_listen", api.metrics_listen)):  # fmt: skip
        # The running agent of this config holds its own ports.
        if address and held_by_another(address) and not held_by_itself(address, path):
            problems.append(f"{what} {address} is in use by another process")
    return list(dict.fromkeys(p for p in problems if p))  # one line per problem


def _hardware_options(args: argparse.Namespace) -> dict[str, object]:
    """Backend options for one-shot commands: probe the Edge TPUs as the agent would."""
    from agent.hardware.probe import probe  # noqa: PLC0415

    if args.config:
        config = load_config(args.config)
        hw = config.hardware
        info = probe(
            config.agent.state_dir,
            sysfs=hw.sysfs_root,
            devfs=hw.dev_root,
            edgetpu_library=hw.edgetpu_library,
        )
        library = info.libedgetpu or hw.edgetpu_library
    else:
        info = probe(Path.cwd())
        library = info.libedgetpu or "libedgetpu.so.1"
    return {
        "edgetpus": tuple(t.device for t in info.edgetpus),
        "edgetpu_library": library,
        "prefer": args.backend,
    }


def _cmd_predict(args: argparse.Namespace) -> int:
    # Imported here: `run` installs its signal handlers before anything heavy is imported.
    from agent.inference.predict import (  # noqa: PLC0415
        PredictRequest,
        as_json,
        as_text,
        predict,
    )

    request = PredictRequest(
        model=args.model,
        image=args.input,
        labels=args.labels,
        top_k=args.top_k,
        threshold=args.threshold,
        mean=args.mean,
        std=args.std,
    )
    result, model = predict(request, num_threads=args.threads, **_hardware_options(args))
    if args.json:
        head = {
            "model": str(args.model),
            "input": str(args.input),
            "backend": model.backend,
            "device": model.device,
        }
        print(json.dumps(head | as_json(result)))
    else:
        for line in as_text(result):
            print(line)
    return 0


def _floats(text: str) -> tuple[float, ...]:
    """A --mean/--std value: one number, or one per channel separated by commas."""
    parts = text.split(",")
    if not 1 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 value, or 1 per channel (up to 4)")
    try:
        return tuple(float(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a list of them") from exc


def _cmd_bench(args: argparse.Namespace) -> int:
    from agent.inference.bench import run_benchmark  # noqa: PLC0415

    if not 0.1 <= args.seconds <= 3600:
        raise ConfigError("--seconds must be within 0.1..3600")
    result = run_benchmark(
        args.model,
        threads=args.threads,
        concurrency=args.concurrency,
        seconds=args.seconds,
        **_hardware_options(args),  # type: ignore[arg-type]
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(result), sort_keys=True))
        return 0
    print(
        f"{result.model}: {result.backend}{' ' + result.device if result.device else ''}, "
        f"{result.threads} thread(s), concurrency {result.concurrency}, "
        f"{result.requests} requests in {result.seconds:.1f} s"
    )
    print(
        f"latency p50 {result.p50_ms:.3f} ms  p95 {result.p95_ms:.3f} ms  "
        f"p99 {result.p99_ms:.3f} ms   throughput {result.throughput_per_s:.1f}/s"
    )
    print(f"host: {result.arch}, {result.cpu_cores} cores, {result.runtime}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from agent.hardware.probe import probe  # noqa: PLC0415

    if args.config:
        config = load_config(args.config)
        hw = config.hardware
        info = probe(
            config.agent.state_dir,
            sysfs=hw.sysfs_root,
            devfs=hw.dev_root,
            edgetpu_library=hw.edgetpu_library,
        )
    else:
        info = probe(args.state_dir)
    data = dataclasses.asdict(info)
    if args.json:
        print(json.dumps(data, sort_keys=True))
        return 0
    for key, value in data.items():
        if key == "edgetpus":
            shown = ", ".join(f"{t['device']} ({t['state']}, {t['path']})" for t in value)
            print(f"{key:20s} {shown or 'none'}")
        elif key == "temperatures_c":
            shown = ", ".join(f"{k} {v:.1f} C" for k, v in value.items())
            print(f"{key:20s} {shown or 'none readable'}")
        else:
            print(f"{key:20s} {value if value != '' else '-'}")
    return 0


def _agent_socket(args: argparse.Namespace) -> Path:
    """The running agent's socket: --socket, else --config's [api] socket, else the default."""
    if not 0.1 <= args.timeout <= 3600:
        raise UsageError("--timeout must be within 0.1..3600 seconds")
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        try:
            return load_config(args.config).api.socket
        except ConfigError as exc:
            raise UsageError(f"{exc} (or name the socket with --socket)") from exc
    return ApiSection().socket


def _cmd_status(args: argparse.Namespace) -> int:
    from agent.local import (  # noqa: PLC0415
        LocalClient,
        as_json,
        read_status,
        status_exit_code,
        status_table,
    )

    with LocalClient(_agent_socket(args), timeout_s=args.timeout) as client:
        doc = read_status(client)
    print(as_json(doc) if args.json else status_table(doc))
    return status_exit_code(doc)


def _cmd_infer(args: argparse.Namespace) -> int:
    from agent.inference.preprocess import read_labels  # noqa: PLC0415
    from agent.local import LocalClient, as_json, infer_once, infer_text  # noqa: PLC0415

    if not 1 <= args.top_k <= 1000:
        raise UsageError("--top-k must be within 1..1000")
    try:
        labels = read_labels(args.labels) if args.labels else None
    except AgentError as exc:
        raise UsageError(str(exc)) from exc
    with LocalClient(_agent_socket(args), timeout_s=args.timeout) as client:
        doc = infer_once(client, args.model, args.input, k=args.top_k, labels=labels)
    print(as_json(doc) if args.json else infer_text(doc))
    return 0


def _socket_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        type=Path,
        help=f"the agent's unix socket (default: {ApiSection().socket}, as the shipped config)",
    )
    where.add_argument("--config", type=Path, help="take the socket from this config's [api]")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


def _backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "cpu", "edgetpu"],
        help="auto: Edge TPU for Edge TPU-compiled models, CPU otherwise",
    )
    parser.add_argument(
        "--config", type=Path, help="take [hardware] settings (libedgetpu path) from this config"
    )


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
    check.add_argument(
        "--user",
        metavar="USER",
        help="also check that USER (the service's: edgefleet in the .deb) can read the files "
        "the config names and write its state dir",
    )
    check.set_defaults(func=_cmd_check_config)

    predict = sub.add_parser(
        "predict",
        help="run a .tflite model once on an image, locally, and say what came out",
        description="Resize and encode an image per the model's input tensor (uint8, int8 or "
        "float; any size), run the model once and print what its outputs mean: the top-k "
        "classes of a classifier (one output of N classes), the boxes of a detector (the four "
        "outputs of TFLite_Detection_PostProcess), or, for any other model (segmentation, "
        "pose, ...), each output tensor's name, shape, dtype and value range. Pixels are "
        "normalized as (p - mean) / std with the mean and std of the model's TFLite metadata "
        "when it has them, else 127.5 and 127.5 (pixels onto [-1, 1]); a quantized input then "
        "stores those values with its scale and zero point. Flags that do not apply to the "
        "model (--top-k on a non-classifier, --threshold on a non-detector) are refused with "
        "exit status 2.",
    )
    predict.add_argument("model", type=Path, help="a .tflite model with one image input")
    predict.add_argument("input", type=Path, help="an image file (BMP, PNG, JPEG, ...)")
    predict.add_argument(
        "--labels",
        type=Path,
        help="labels file: line i names class i, or lines 'ID NAME' (Coral's detection "
        "labels); it must cover exactly the model's classes",
    )
    predict.add_argument(
        "--top-k", type=int, help="classifiers: how many classes to print (default 3)"
    )
    predict.add_argument(
        "--threshold",
        type=float,
        help="detectors: the lowest score printed, 0..1 (default 0.5)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.add_argument(
        "--mean",
        type=_floats,
        metavar="M[,M,M]",
        help="pixel mean to subtract, one value or one per channel (default: the model's "
        "metadata, else 127.5)",
    )
    predict.add_argument(
        "--std",
        type=_floats,
        metavar="S[,S,S]",
        help="pixel scale to divide by, one value or one per channel (default: the model's "
        "metadata, else 127.5)",
    )
    predict.add_argument("--threads", type=int, default=1, choices=range(1, 65), metavar="N")
    _backend_arguments(predict)
    predict.set_defaults(func=_cmd_predict)

    bench = sub.add_parser(
        "bench",
        help="measure a model's latency and throughput on this device",
        description="Run a model on random input for a while and report p50/p95/p99 latency and "
        "throughput, with the host described, so results compare across hardware.",
    )
    bench.add_argument("model", type=Path, help="a .tflite model")
    bench.add_argument(
        "--threads",
        type=int,
        default=1,
        choices=range(1, 65),
        metavar="N",
        help="CPU threads per interpreter",
    )
    bench.add_argument(
        "--concurrency",
        type=int,
        default=1,
        choices=range(1, 33),
        metavar="N",
        help="parallel requests (each with its own interpreter on the CPU)",
    )
    bench.add_argument("--seconds", type=float, default=5.0, help="measuring time (default 5)")
    bench.add_argument("--json", action="store_true")
    _backend_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    probe_cmd = sub.add_parser("probe", help="print this device's capabilities")
    probe_cmd.add_argument("--json", action="store_true")
    probe_cmd.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgefleet-agent"))
    probe_cmd.add_argument("--config", type=Path, help="probe as the agent with this config would")
    probe_cmd.set_defaults(func=_cmd_probe)

    access = (
        "Talks to the running agent through its unix socket: root and the members of the "
        "socket's group may (see docs/agent-cli.md)."
    )
    codes = (
        "exit status: 0 ok; 1 the agent answered but is not ready, a model fails, or it "
        "refused the request; 2 usage error; 3 the socket cannot be reached (missing, "
        "permission denied, nobody listening)"
    )
    status = sub.add_parser(
        "status",
        help="what the running agent serves and how it stands",
        description="Models (version, variant, backend, routing), requests, refusals and "
        f"latency per model, readiness, telemetry and the last update. {access}",
        epilog=codes,
    )
    _socket_arguments(status)
    status.set_defaults(func=_cmd_status)

    infer = sub.add_parser(
        "infer",
        help="run one input through a model of the running agent",
        description="Send an image (encoded for the model's input as predict does) or a .npy "
        "array to MODEL over the agent's socket; print the top-k classes, or the outputs' "
        f"names and shapes, and what served it (path, variant, backend). {access}",
        epilog=codes,
    )
    infer.add_argument("model", help="the model's name on the agent (see status)")
    infer.add_argument("input", type=Path, help="an image file, or a .npy array")
    infer.add_argument("--labels", type=Path, help="labels file, line i = class i")
    infer.add_argument("--top-k", type=int, default=3)
    _socket_arguments(infer)
    infer.set_defaults(func=_cmd_infer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except SocketError as exc:
        print(f"{PROG}: error: {printable(str(exc))}", file=sys.stderr)
        return 3
    except PortInUseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    except UsageError as exc:
        print(f"{PROG}: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"{PROG}: error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
