"""Check-in load from simulated devices, in its own process (grpc.aio, one mTLS channel each).

    python -m bench.checkin_load DEVICES_JSON FIRST COUNT SECONDS

DEVICES_JSON lists devices as written by bench/bench_checkin.py (address, CA, key and
certificate per device). Devices FIRST..FIRST+COUNT check in back to back for SECONDS, each
sending the state version it last got (the common, unchanged case), and the process prints
"calls errors" on one line. With ``--bare`` the devices call a bare unary method instead (the
floor to compare with): same channels, same TLS, no EdgeFleet code on the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc

BARE_METHOD = "/bench.Bare/Echo"
WARMUP_S = 2.0


async def run(devices: list[dict[str, str]], seconds: float, bare: bool) -> tuple[int, int]:
    calls = errors = 0
    counting_from = time.perf_counter() + WARMUP_S  # connections and caches warm up first
    deadline = counting_from + seconds

    async def device_loop(d: dict[str, str]) -> None:
        nonlocal calls, errors
        credentials = grpc.ssl_channel_credentials(
            root_certificates=d["ca"].encode(),
            private_key=d["key"].encode(),
            certificate_chain=d["cert"].encode(),
        )
        async with grpc.aio.secure_channel(d["address"], credentials) as channel:
            if bare:
                echo = channel.unary_unary(BARE_METHOD)
                while time.perf_counter() < deadline:
                    try:
                        await echo(b"x", timeout=10)
                        calls += time.perf_counter() > counting_from
                    except grpc.RpcError:
                        errors += 1
                return
            stub = pb_grpc.DeviceServiceStub(channel)
            request = pb.CheckInRequest(
                active=[pb.ActiveModel(model_name="color", version=d.get("version", "1.0.0"))]
            )
            while time.perf_counter() < deadline:
                try:
                    response = await stub.CheckIn(request, timeout=10)
                    request.state_version = response.state_version
                    calls += time.perf_counter() > counting_from
                except grpc.RpcError:
                    errors += 1

    await asyncio.gather(*(device_loop(d) for d in devices))
    return calls, errors


def main() -> int:
    bare = "--bare" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--bare"]
    devices_file, first, count, seconds = args[0], int(args[1]), int(args[2]), float(args[3])
    devices = json.loads(Path(devices_file).read_text())[first : first + count]
    calls, errors = asyncio.run(run(devices, seconds, bare))
    print(calls, errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
