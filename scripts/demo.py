"""The whole EdgeFleet story on one machine, with embedded defaults (no broker to install).

    make demo        (or: python scripts/demo.py [--state-dir DIR])

1. `edgefleet-server init` + `run`: SQLite, artifact folder, release key, embedded MQTT broker.
2. `edgefleet models push --deploy`: the Coral MobileNet (uint8) is stored and signed.
3. Two `edgefleet-agent run` processes enroll, check in, download, verify and activate it.
4. cat.bmp is classified through each agent's local Open Inference Protocol v2 API.
5. The agents' telemetry arrives at the server over MQTT; `edgefleet devices list` shows it.
6. A staged rollout of a two-variant release: one canary, then the rest.
7. Cloud routing: a digit classifier whose int8 variant runs on the devices and whose float
   variant the server's reference cloud serves; a cascade sends the unsure digits to the cloud;
   `edgefleet costs` prices it against local only and cloud only.
8. Everything shuts down cleanly; exit 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from agent.inference.modelfile import inspect_model_file
from agent.inference.preprocess import image_to_tensor, load_image, read_labels, top_k
from protos import inference_pb2, inference_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
MODEL = DATA / "mobilenet_v1_0.25_128_quant.tflite"
_T = TypeVar("_T")


class DemoError(Exception):
    """A step of the demo failed."""


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def cli(module: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise DemoError(f"{module} {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout


def wait_for(what: str, probe: Callable[[], _T | None], timeout: float = 60.0) -> _T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)


def classify(socket: Path, labels: list[str]) -> tuple[str, float, str]:
    tensor = inspect_model_file(MODEL).inputs[0]
    data = image_to_tensor(load_image(DATA / "cat.bmp"), tensor)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"unix:{socket}"))
    request = inference_pb2.ModelInferRequest(model_name="mobilenet")
    request.inputs.add(name=tensor.name, datatype="UINT8", shape=list(tensor.shape))
    request.raw_input_contents.append(data.tobytes())
    response = stub.ModelInfer(request, timeout=10)
    scores = np.frombuffer(response.raw_output_contents[0], dtype=np.uint8)
    best = top_k(scores, inspect_model_file(MODEL).outputs[0], 1, labels)[0]
    return best.label, best.score, response.model_version


def run(state: Path) -> None:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        step("edgefleet-server init: SQLite database, artifact folder, root and release keys")
        data_dir = state / "server"
        print(cli("fleet_server.cli", "init", "--data-dir", str(data_dir), "--fleet-id", "demo"))

        step(
            "edgefleet-server run: gRPC + embedded MQTT broker (MQTT 3.1.1 over TLS: fleet "
            "client certificates only, per-device topics)"
        )
        ready = state / "server-ready.json"
        server = start(
            [
                sys.executable,
                "-m",
                "fleet_server.cli",
                "run",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--ready-file",
                str(ready),
                "--rollout-interval",
                "0.5",
                "--cloud-listen",
                "127.0.0.1:0",
            ],
            state / "server.log",
        )
        procs.append(("server", server))
        info: dict[str, Any] = wait_for(
            "the server", lambda: json.loads(ready.read_text()) if ready.exists() else None
        )
        address = f"127.0.0.1:{info['grpc_port']}"
        print(f"gRPC on {address}, MQTT broker at {info['mqtt_url']}")
        admin = ("fleet_server.admin_cli", "--server", address, "--data-dir", str(data_dir))

        step("edgefleet models push: store, hash and sign the Coral MobileNet; deploy it")
        print(
            cli(
                *admin,
                "models",
                "push",
                str(MODEL),
                "--name",
                "mobilenet",
                "--version",
                "1.0.0",
                "--variant",
                "int8",
                "--deploy",
            ),
            end="",
        )

        step("edgefleet-agent run x2: enroll (token + CSR -> certificate), check in over mTLS,")
        print("download, verify, smoke-test, activate")
        sockets = {}
        for name, ring in (("edge-cam-1", "canary"), ("edge-cam-2", "main")):
            # A single-use token per device; the label it carries lands on the device.
            token = cli(*admin, "tokens", "create", "--label", f"ring={ring}").strip()
            home = state / name
            home.mkdir()
            (home / "agent.toml").write_text(
                f'[agent]\nname = "{name}"\nstate_dir = "state"\n'
                f'[server]\naddress = "{address}"\nenrollment_token = "{token}"\n'
                f'ca_file = "{data_dir / "ca" / "ca.crt"}"\n'
                'checkin_interval_s = 2.0\n[api]\nsocket = "oip.sock"\n'
                "[telemetry]\ninterval_s = 1.0\n"
            )
            procs.append(
                (
                    name,
                    start(
                        [
                            sys.executable,
                            "-m",
                            "agent.cli",
                            "run",
                            "--config",
                            str(home / "agent.toml"),
                        ],
                        home / "agent.log",
                    ),
                )
            )
            sockets[name] = home / "oip.sock"

        def installed() -> list[dict[str, Any]] | None:
            devices = json.loads(cli(*admin, "devices", "list", "--json"))
            done = [
                d for d in devices if any(m["state"] == "INSTALLED" for m in d.get("models", []))
            ]
            return devices if len(done) == 2 else None

        for d in wait_for("both agents to install mobilenet 1.0.0", installed):
            versions = ", ".join(f"{m['model_name']} {m['version']}" for m in d["models"])
            print(f"{d['device_id']}: active {versions}")

        step("classify cat.bmp through each agent's local OIP v2 API (unix socket)")
        labels = read_labels(DATA / "imagenet_labels.txt")
        for name, sock in sockets.items():
            label, score, version = classify(sock, labels)
            print(f"{name}: top-1 '{label}' (score {score:.3f}) from mobilenet {version}")

        step("telemetry: agents publish over MQTT, the server ingests it")

        def telemetry() -> list[dict[str, Any]] | None:
            devices = json.loads(cli(*admin, "devices", "list", "--json"))
            seen = [
                d
                for d in devices
                if any(
                    int(m.get("requests", 0)) >= 1
                    for m in (d.get("last_telemetry") or {}).get("models", [])
                )
            ]
            return devices if len(seen) == 2 else None

        for d in wait_for("telemetry of both agents", telemetry):
            report = d["last_telemetry"]
            m = report["models"][0]
            print(
                f"{d['device_id']}: telemetry seq {report['seq']}: {m['model_name']} "
                f"{m['version']} on {m['backend']}: {int(m['requests'])} request(s), "
                f"p50 {m['latency'].get('p50_ms', 0.0):.2f} ms"
            )

        step("a staged rollout: mobilenet 1.1.0 in two variants, one canary first, then the rest")
        print(
            cli(
                *admin,
                "models",
                "push",
                str(MODEL),
                str(MODEL.with_name(MODEL.stem + "_edgetpu.tflite")),
                "--name",
                "mobilenet",
                "--version",
                "1.1.0",
            ),
            end="",
        )
        created = json.loads(
            cli(*admin, "rollouts", "create", "mobilenet", "1.1.0", "--waves", "1,100%", "--json")
        )
        rollout = str(created["rollout_id"])

        def completed() -> bool:
            status = json.loads(cli(*admin, "rollouts", "status", rollout, "--json"))
            return bool(status["state"] == "completed")

        wait_for("the rollout to complete", completed)
        print(cli(*admin, "rollouts", "status", rollout), end="")
        step("why edge-cam-1 runs the int8 variant and not the Edge TPU one")
        print(cli(*admin, "devices", "explain", "edge-cam-1", "mobilenet"), end="")

        cascade(admin, sockets["edge-cam-1"])

        step("summary: edgefleet devices list")
        print(cli(*admin, "devices", "list"), end="")
    finally:
        step("shutting down (SIGTERM)")
        for name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            print(f"{name}: exited {code}")
            if code != 0:
                raise DemoError(f"{name} exited {code}; see its log in {state}")


def ask_digit(socket: Path, sample: np.ndarray) -> tuple[int, str]:
    """The predicted digit and which path (local or cloud) answered."""
    request = inference_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(sample.astype(np.float32).reshape(1, 64).tobytes())
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=10
        )
    scores = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    return int(np.argmax(scores)), response.parameters["edgefleet.path"].string_param


def cascade(admin: tuple[str, ...], socket: Path) -> None:
    """Step 7: the digits cascade through one agent, and what it costs."""
    from fleet_server.routing.datasets import digits  # noqa: PLC0415 - needs scikit-learn

    step("cloud routing: digits (int8 on the devices, float in the server's reference cloud)")
    print(
        cli(
            *admin,
            "models",
            "push",
            str(DATA / "digits_local_int8.tflite"),
            str(DATA / "digits_cloud_float.tflite"),
            "--name",
            "digits",
            "--version",
            "1.0.0",
            "--deploy",
        ),
        end="",
    )
    print(cli(*admin, "routing", "set", "digits", "cascade", "--threshold", "0.85"), end="")
    data = digits()
    unsure = data.test_x[588]  # the int8 model's top score for it is 0.40

    def routed() -> bool:
        try:
            return ask_digit(socket, unsure)[1] == "cloud"
        except grpc.RpcError:
            return False  # not installed yet

    wait_for("edge-cam-1 to run digits under the cascade", routed)
    paths = {"local": 0, "cloud": 0}
    correct = 0
    for sample, label in zip(data.test_x, data.test_y, strict=True):
        predicted, path = ask_digit(socket, sample)
        paths[path] += 1
        correct += predicted == label
    total = len(data.test_y)
    print(
        f"edge-cam-1: {total} held-out digits: accuracy {correct / total:.2%}, "
        f"{paths['cloud']} ({paths['cloud'] / total:.1%}) answered by the cloud"
    )

    def costed() -> bool:
        rows = json.loads(cli(*admin, "costs", "--json")).get("rows", [])
        return any(r["policy"] == "cascade" and int(r["served"]) >= total for r in rows)

    wait_for("the cost report", costed)
    print(cli(*admin, "costs"), end="")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".demo")
    state = parser.parse_args().state_dir.resolve()
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    try:
        run(state)
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        for log in sorted(state.rglob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-8:]
            print(f"--- {log.relative_to(state)} (last lines)", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
        return 1
    print(f"\ndemo complete; logs and state in {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
