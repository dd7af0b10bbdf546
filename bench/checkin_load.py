"""Check-in load from simulated devices, in its own process (grpc.aio, one mTLS channel each).

    python -m bench.checkin_load DEVICES_JSON FIRST COUNT SECONDS [MQTT_URL FLEET VERSION]
                                 [--bare] [--warmup S]

With the last three arguments the devices follow a rollout instead: they poll every 60 s,
check in at once when the server nudges them over MQTT, retry a failed call after 1 s (as an
agent retries, and logging it on stderr), and the process prints the seconds until every one of
them runs VERSION and the number of failed calls.

DEVICES_JSON lists devices as written by bench/bench_checkin.py (address, CA, key and
certificate per device). Devices FIRST..FIRST+COUNT check in back to back for SECONDS, each
sending the state version it last got (the common, unchanged case), and the process prints
"calls errors" on one line. With ``--bare`` the devices call a bare unary method instead (the
floor to compare with): same channels, same TLS, no EdgeFleet code on the server. Calls in
the first S seconds (``--warmup``, default 2) are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos import manifest_pb2

BARE_METHOD = "/bench.Bare/Echo"
_R = TypeVar("_R")


async def run(
    devices: list[dict[str, str]], seconds: float, bare: bool, warmup: float
) -> tuple[int, int]:
    calls = errors = 0
    counting_from = time.perf_counter() + warmup  # connections and caches warm up first
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
            # What a Raspberry Pi class agent sends: capabilities and its active model.
            request = pb.CheckInRequest(
                capabilities=pb.Capabilities(
                    arch="aarch64",
                    cpu_cores=4,
                    memory_bytes=4 << 30,
                    disk_free_bytes=20 << 30,
                    runtime="ai-edge-litert",
                    runtime_version="1.4.0",
                    max_builtin_op=209,
                    temperatures_c={"soc": 51.5},
                ),
                active=[pb.ActiveModel(model_name="color", version=d.get("version", "1.0.0"))],
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


async def follow(
    devices: list[dict[str, str]], seconds: float, mqtt_url: str, fleet: str, target: str
) -> tuple[float, int]:
    """Poll every 60 s like agents would, check in at once when nudged over MQTT, "install"
    what the answer names; return when every device runs ``target``: (seconds since start,
    failed calls, each retried after 1 s)."""
    import paho.mqtt.client as paho  # noqa: PLC0415

    from agent.telemetry.mqtt import parse_mqtt_url  # noqa: PLC0415
    from protos import telemetry_pb2  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    events = {d["device_id"]: asyncio.Event() for d in devices}
    done = asyncio.Event()
    remaining = set(events)
    failed = 0

    async def retried(method: Callable[..., Awaitable[_R]], request: object) -> _R:
        """Call ``method`` until it succeeds, as an agent retries a failed check-in or report."""
        nonlocal failed
        while True:
            try:
                return await method(request, timeout=30)
            except grpc.RpcError as exc:
                failed += 1
                print(f"retrying in 1 s: {exc.code().name}: {exc.details()}", file=sys.stderr)
                await asyncio.sleep(1.0)

    def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
        device_id = message.topic.split("/")[3]
        if device_id in events and telemetry_pb2.Command.FromString(bytes(message.payload)).id:
            loop.call_soon_threadsafe(events[device_id].set)

    endpoint = parse_mqtt_url(mqtt_url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.on_message = on_message
    client.connect(endpoint.host, endpoint.port)
    client.subscribe(f"edgefleet/v1/{fleet}/+/commands", qos=1)
    client.loop_start()
    print("ready", flush=True)

    async def device_loop(d: dict[str, str]) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=d["ca"].encode(),
            private_key=d["key"].encode(),
            certificate_chain=d["cert"].encode(),
        )
        async with grpc.aio.secure_channel(d["address"], credentials) as channel:
            stub = pb_grpc.DeviceServiceStub(channel)
            running = "1.0.0"
            state = ""
            while not done.is_set():
                event = events[d["device_id"]]
                fresh = event.is_set()
                event.clear()
                request = pb.CheckInRequest(
                    active=[pb.ActiveModel(model_name="color", version=running)],
                    state_version=state,
                    fresh=fresh,
                )
                response = await retried(stub.CheckIn, request)
                state = response.state_version
                for envelope in [] if response.unchanged else response.desired:
                    version = manifest_pb2.Manifest.FromString(envelope.payload).version
                    if version != running:
                        running = version
                        report = pb.StatusReport(
                            model_name="color", version=version, state=pb.INSTALLED
                        )
                        await retried(stub.ReportStatus, report)
                if running == target:
                    remaining.discard(d["device_id"])
                    if not remaining:
                        done.set()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=60)

    try:
        await asyncio.wait_for(asyncio.gather(*(device_loop(d) for d in devices)), seconds)
    finally:
        client.loop_stop()
    return time.perf_counter() - started, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("devices_file", type=Path)
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("rollout", nargs="*", metavar="MQTT_URL FLEET VERSION")
    parser.add_argument("--bare", action="store_true", help="call the bare server's method")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    args = parser.parse_args()
    devices = json.loads(args.devices_file.read_text())[args.first : args.first + args.count]
    if args.rollout:  # follow a rollout: MQTT_URL FLEET TARGET_VERSION
        if len(args.rollout) != 3:
            parser.error("a rollout needs MQTT_URL FLEET VERSION")
        elapsed, failed = asyncio.run(follow(devices, args.seconds, *args.rollout))
        print(f"{elapsed:.2f} {failed}")
        return 0
    calls, errors = asyncio.run(run(devices, args.seconds, args.bare, args.warmup))
    print(calls, errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
