"""A client for a cloud inference endpoint: any Open Inference Protocol v2 gRPC server
(Triton, KServe, MLServer, or the fleet server's reference service), with TLS and a token.

Calls have a deadline; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with jittered backoff
within it; an answer whose tensors do not add up is refused as malformed.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import grpc
import numpy as np

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

__all__ = ["CloudClient", "CloudError", "CloudTarget", "check_answer"]

log = logging.getLogger(__name__)

_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
_SIZES = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "UINT32": 4,
    "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}  # fmt: skip
_MAX_MESSAGE = 64 * 1024 * 1024


class CloudError(Exception):
    """A cloud call that did not give a usable answer; the message says why."""


@dataclass(frozen=True)
class CloudTarget:
    """Where the cloud is: ``grpcs://host:port`` (TLS) or ``grpc://host:port`` (plaintext,
    for a loopback or a trusted network), a bearer token, and the CA for TLS (None: the
    system's roots)."""

    url: str
    token: str = ""
    ca_pem: bytes | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("grpc://", "grpcs://")) or ":" not in self.url[8:]:
            raise ValueError(f"cloud URL {self.url!r} must be grpcs://host:port or grpc://...")


class CloudClient:
    """One channel to the cloud, shared by every request (thread-safe)."""

    def __init__(self, target: CloudTarget, *, timeout_s: float = 2.0, retries: int = 1) -> None:
        self.target = target
        self._timeout = timeout_s
        self._retries = retries
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        address = target.url.split("://", 1)[1]
        if target.url.startswith("grpcs://"):
            credentials = grpc.ssl_channel_credentials(root_certificates=target.ca_pem)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Forward one request; the answer, checked.

        Raises:
            CloudError: unreachable, too slow, refused, or a malformed answer.
        """
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CloudError(f"no answer within {self._timeout:g} s")
            try:
                response: pb.ModelInferResponse = self._stub.ModelInfer(
                    request, timeout=remaining, metadata=self._metadata
                )
            except ValueError as exc:  # the channel was closed by a reload meanwhile
                raise CloudError(f"the cloud endpoint changed during the call: {exc}") from exc
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                if code in _RETRIED and attempt < self._retries:
                    attempt += 1
                    # Full jitter: 0..50 ms, 0..100 ms, ... so devices do not retry in step.
                    time.sleep(min(random.uniform(0, 0.05 * 2**attempt), max(remaining, 0)))  # noqa: S311
                    continue
                name = code.name if code is not None else "ERROR"
                raise CloudError(f"{name}: {detail}") from exc
            check_answer(response)
            return response

    def close(self) -> None:
        self._channel.close()


def check_answer(response: pb.ModelInferResponse) -> None:
    """Every output has raw contents whose size matches its shape and datatype.

    Raises:
        CloudError: it does not.
    """
    if not response.outputs:
        raise CloudError("malformed answer: no outputs")
    if len(response.raw_output_contents) != len(response.outputs):
        raise CloudError(
            f"malformed answer: {len(response.outputs)} outputs, "
            f"{len(response.raw_output_contents)} raw contents"
        )
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        size = _SIZES.get(output.datatype)
        if size is None:
            raise CloudError(f"malformed answer: output {output.name!r} has datatype "
                             f"{output.datatype!r}")  # fmt: skip
        if any(d < 0 for d in output.shape):
            raise CloudError(f"malformed answer: output {output.name!r} shape {output.shape}")
        expected = int(np.prod(output.shape, dtype=np.int64)) * size
        if expected != len(raw):
            raise CloudError(
                f"malformed answer: output {output.name!r} {list(output.shape)} "
                f"{output.datatype} needs {expected} bytes, got {len(raw)}"
            )
