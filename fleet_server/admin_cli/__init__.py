"""``edgefleet``: the fleet admin's command line (talks to AdminService over gRPC).

One module per area (models, devices, keys, rollouts, windows, routing, optimize, webhooks), each
adding its commands to the parser; what they share is public in
:mod:`fleet_server.admin_cli.common`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet_server import __version__
from fleet_server.admin_cli import (
    admins,
    common,
    devices,
    keys,
    manifests,
    models,
    optimize,
    rollouts,
    routing,
    webhooks,
    windows,
)
from fleet_server.admin_cli.common import PROG
from fleet_server.admin_cli.terminal import EscapingStream
from fleet_server.errors import FleetError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        # A command's own option is not read as an abbreviation of a global one
        # ('windows add --to 05:00' is not --token).
        allow_abbrev=False,
        description="EdgeFleet fleet administration.",
        epilog="Exit codes: 0 success; 1 the server or the input refused it (one line on "
        "stderr says why); 2 usage error. Tables by default; --json where scripts need it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--server",
        default=os.environ.get("EDGEFLEET_SERVER", "127.0.0.1:7443"),
        help="fleet server address (env EDGEFLEET_SERVER; default 127.0.0.1:7443)",
    )
    parser.add_argument(
        "--token", help="your admin token (env EDGEFLEET_ADMIN_TOKEN; prefer --token-file)"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="read your admin token from this file (env EDGEFLEET_ADMIN_TOKEN_FILE)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="the fleet CA certificate (env EDGEFLEET_CA_FILE; default DATA_DIR/ca/ca.crt)",
    )
    parser.add_argument(
        "--client-cert",
        type=Path,
        metavar="FILE",
        help="your client certificate from 'admins cert', instead of a token (env "
        "EDGEFLEET_CLIENT_CERT); --server then names the server's device port (mTLS, 7444)",
    )
    parser.add_argument(
        "--client-key",
        type=Path,
        metavar="FILE",
        help="its private key (env EDGEFLEET_CLIENT_KEY; default: the certificate's name "
        "with .key for .crt)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="read the admin token from this server data dir"
    )
    parser.add_argument(
        "--timeout", type=common.number(0.1, 3600), default=60.0, help="RPC timeout in seconds"
    )
    parser.add_argument(
        "--wait",
        type=common.number(0, 3600),
        default=10.0,
        metavar="SECONDS",
        help="wait this long for a server that refuses connections (one starting up; "
        "default 10, 0: do not wait)",
    )
    sub = parser.add_subparsers(dest="group", required=True)
    routing.add_parser(sub)
    routing.add_costs_parser(sub)
    optimize.add_parser(sub)
    models.add_parsers(sub)
    manifests.add_parsers(sub)
    keys.add_parsers(sub)
    devices.add_parsers(sub)
    admins.add_parsers(sub)
    rollouts.add_parsers(sub)
    webhooks.add_parsers(sub)
    windows.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    sys.stdout = EscapingStream(out)
    sys.stderr = EscapingStream(err, progress=True)
    try:
        return int(args.func(args))
    except FleetError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # A reader that stopped early (| head): not an error of ours, and no traceback.
        # Python's own flush at exit would fail again: point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
        return 141  # as a process ended by SIGPIPE
    finally:
        sys.stdout, sys.stderr = out, err
