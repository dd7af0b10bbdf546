"""The devices of bench/bench_objstore.py, in a process of their own: enroll N simulated devices,
print "enrolled" and wait for a line on stdin, then have all of them download one artifact at
once, through the server's gRPC stream or from the object store with the presigned URL the
server gives each (GetDownloadUrl), hashing what arrives. Prints one JSON line: {"seconds": wall
time of the downloads, "from_server": bytes of the server's answers, "from_store": bytes of the
store's}.

    python -m bench.objstore_client --mode grpc|url --address HOST:PORT --ca CA --token T \
        --devices 50 --artifact SHA256 --size BYTES
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fleet_server.simulator import SimDevice, SimFleet
from protos import device_pb2 as pb


def download(device: SimDevice, mode: str, artifact: str) -> tuple[int, int, str]:
    """(bytes from the server, bytes from the store, sha256 of the artifact received)."""
    hasher = hashlib.sha256()
    server = store = 0
    if mode == "grpc":
        for chunk in device.stub.DownloadArtifact(
            pb.DownloadRequest(artifact_id=artifact, offset=0), timeout=600
        ):
            hasher.update(chunk.data)
            server += chunk.ByteSize()
    else:
        url = device.stub.GetDownloadUrl(pb.DownloadUrlRequest(artifact_id=artifact), timeout=30)
        server += url.ByteSize()
        with urllib.request.urlopen(url.url, timeout=600) as response:  # noqa: S310 - the bench's store
            while block := response.read(1 << 20):
                hasher.update(block)
                store += len(block)
    return server, store, hasher.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("grpc", "url"), required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    fleet = SimFleet(args.address, args.ca.read_bytes())
    devices = [
        SimDevice.enroll(fleet, args.token, f"bench-{args.mode}-{i}") for i in range(args.devices)
    ]
    print("enrolled", flush=True)
    sys.stdin.readline()  # the bench reads the server's counters, then says go
    results: list[tuple[int, int, str] | BaseException] = []
    lock = threading.Lock()
    gate = threading.Barrier(len(devices) + 1)

    def run(device: SimDevice) -> None:
        gate.wait()
        try:
            outcome: tuple[int, int, str] | BaseException = download(
                device, args.mode, args.artifact
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(d,)) for d in devices]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for device in devices:
        device.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    wrong = [r for r in done if r[2] != args.artifact]
    if failed or wrong:
        print(f"{len(failed)} failed ({failed[:1]}), {len(wrong)} wrong", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "from_server": sum(r[0] for r in done),
                      "from_store": sum(r[1] for r in done)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
