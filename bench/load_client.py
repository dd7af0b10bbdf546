"""A load generator in its own process, as a device's apps would be.

    python bench/load_client.py SOCKET METHOD PAYLOAD_FILE THREADS SECONDS

Sends the pre-serialized request bytes in PAYLOAD_FILE to the unary METHOD over the unix socket
from THREADS threads for SECONDS, and prints the calls per second served (a call the server
refuses at admission, RESOURCE_EXHAUSTED, is sent again, not counted). Bytes in, bytes out: no
protobuf work on the client, so the server side is what is measured.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import grpc


def main() -> int:
    sock, method, payload_file, threads_arg, seconds_arg = sys.argv[1:6]
    payload = Path(payload_file).read_bytes()
    threads, seconds = int(threads_arg), float(seconds_arg)
    channel = grpc.insecure_channel(
        f"unix:{sock}",
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )
    call = channel.unary_unary(method)
    for _ in range(5):
        call(payload)
    deadline = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.perf_counter() < deadline:
            try:
                call(payload)
            except grpc.RpcError as exc:  # a flood's excess is refused: not a served call
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                continue
            counts[i] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(f"{sum(counts) / (time.perf_counter() - start):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
