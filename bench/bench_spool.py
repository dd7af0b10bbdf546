"""The agent's telemetry spool: how fast it stores, and how fast it replays after an outage.

    python -m bench.bench_spool [--messages 5000] [--quick]

Write: MESSAGES telemetry reports appended one by one (each its own durable transaction, as the
agent appends them). Replay: the full spool published through the agent's Forwarder to a
private mosquitto (QoS 1, deleted on PUBACK) with a subscriber counting arrivals; the floor in
the same run: the same messages published by a bare paho client without a spool.
--quick: 300 messages.
"""

from __future__ import annotations

import argparse
import functools
import os
import threading
import time

import paho.mqtt.client as paho

from agent.telemetry.forward import Forwarder
from agent.telemetry.mqtt import MqttPublisher, parse_mqtt_url
from agent.telemetry.spool import Spool
from bench.processes import run_folder
from protos import telemetry_pb2
from tests.harness import start_mosquitto

TOPIC = "edgefleet/v1/default/bench/telemetry"


def report(seq: int) -> bytes:
    message = telemetry_pb2.TelemetryReport(device_id="bench", seq=seq, epoch="e")
    model = message.models.add(model_name="mobilenet", version="1.0.0", backend="cpu")
    model.latency.p50_ms = 1.2
    return message.SerializeToString()


class Counter:
    def __init__(self, port: int, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.done = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(TOPIC, qos=1)
        self.client.loop_start()
        time.sleep(0.5)

    def _on_message(self, _c: object, _u: object, _m: object) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()

    def wait(self, what: str, timeout: float = 60.0) -> None:
        """Wait until every expected message arrived.

        Raises:
            TimeoutError: they did not all arrive within ``timeout`` seconds.
        """
        if not self.done.wait(timeout):
            raise TimeoutError(
                f"{what}: the subscriber got {self.count} of {self.expected} messages in "
                f"{timeout:.0f} s"
            )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _same(payload: bytes, _seq: int) -> bytes:
    return payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="300 messages (a smoke run)")
    args = parser.parse_args()
    n = 300 if args.quick else args.messages
    payloads = [report(i + 1) for i in range(n)]
    with run_folder("bench_spool") as children:
        tmp = children.folder
        broker = start_mosquitto(tmp / "broker")
        try:
            spool = Spool(tmp / "spool.db", max_messages=n * 2)
            started = time.perf_counter()
            for payload in payloads:
                spool.append(TOPIC, functools.partial(_same, payload))
            write = n / (time.perf_counter() - started)

            counter = Counter(broker.port, n)
            publisher = MqttPublisher(parse_mqtt_url(broker.url), client_id="bench-spool")
            publisher.connect()
            forwarder = Forwarder(spool, publisher)
            started = time.perf_counter()
            while len(spool):
                if time.perf_counter() - started > 120:
                    raise TimeoutError(f"the spool still holds {len(spool)} of {n} after 120 s")
                forwarder.drain(threading.Event(), budget_s=5.0)
            counter.wait("spool replay")
            replay = counter.count / (time.perf_counter() - started)
            publisher.close()
            counter.close()
            spool.close()

            counter = Counter(broker.port, n)
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            started = time.perf_counter()
            infos = [client.publish(TOPIC, p, qos=1) for p in payloads]
            for info in infos:
                info.wait_for_publish(60)
            counter.wait("bare publish")
            bare = counter.count / (time.perf_counter() - started)
            client.loop_stop()
            client.disconnect()
            counter.close()
        finally:
            broker.proc.stop()
    print(f"{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores · {n} telemetry reports")
    print()
    print("| measurement | messages/s | ratio |")
    print("|---|---|---|")
    print(f"| spool append (one durable transaction each) | {write:.0f} | |")
    print(f"| bare paho publish, QoS 1, to a subscriber | {bare:.0f} | 1.00x |")
    print(f"| spool replay through the Forwarder, QoS 1 | {replay:.0f} | {replay / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
