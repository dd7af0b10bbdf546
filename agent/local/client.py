"""A gRPC client of the running agent's unix socket, for the operator's commands.

gRPC says only UNAVAILABLE when a unix socket cannot be used. :func:`check_socket` says why, in
the terms an operator acts on, before the first call: the socket is missing (the agent is not
running, or the path is not its ``[api] socket``), a folder on the way or the socket itself is
closed to the caller (its group is what grants access: join it), or nobody listens (a socket
left by a stopped agent). gRPC errors become ours here.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from agent.errors import (
    AgentError,
    InputError,
    ModelNotFoundError,
    QueueFullError,
    SocketError,
)
from protos import agent_local_pb2, agent_local_pb2_grpc
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

__all__ = ["LocalClient", "check_socket"]

_R = TypeVar("_R")
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # what the agent accepts and sends
_JOIN = "sudo usermod -aG {group} $USER, then log in again"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _closed_folder(path: Path) -> Path | None:
    """The first folder above ``path`` the caller may not pass through, if any."""
    for folder in reversed(path.parents):
        if not os.access(folder, os.X_OK):
            return folder
    return None


def _denied(what: Path, path: Path) -> SocketError:
    info = what.stat()
    group = _group(info.st_gid)
    where = "agent socket" if what == path else f"folder {what} on the way to agent socket"
    return SocketError(
        f"permission denied on {where} {path} (mode {stat.S_IMODE(info.st_mode):04o}, "
        f"group {group}): add yourself to group {group} ({_JOIN.format(group=group)}), "
        "or run this as root"
    )


def check_socket(path: Path, timeout_s: float = 5.0) -> None:
    """Connect to the unix socket at ``path`` once, to say why it cannot be used.

    Raises:
        SocketError: missing, not a socket, closed to the caller, or nobody listening.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SocketError(
            f"agent socket {path} does not exist: is the agent running (systemctl status "
            "edgefleet-agent)? Its config's [api] socket says where it is (--config, --socket)"
        ) from None
    except PermissionError:
        folder = _closed_folder(path)
        if folder is None:
            raise SocketError(f"permission denied on agent socket {path}") from None
        raise _denied(folder, path) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketError(f"{path} is not a socket: is it the agent's [api] socket?")
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except PermissionError:
            raise _denied(path, path) from None
        except ConnectionRefusedError:
            raise SocketError(
                f"connection refused on agent socket {path}: no agent listens there (a socket "
                "left by a stopped agent); start it (systemctl start edgefleet-agent)"
            ) from None
        except OSError as exc:
            why = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            raise SocketError(f"cannot connect to agent socket {path}: {why}") from None


class LocalClient:
    """OIP v2 and ``AgentLocal`` calls on the agent's unix socket.

    Every call raises ``SocketError`` when the agent stops answering (or does not answer in
    time), ``ModelNotFoundError``
    (NOT_FOUND), ``InputError`` (INVALID_ARGUMENT), ``QueueFullError`` (RESOURCE_EXHAUSTED),
    and ``AgentError`` for the rest, with the agent's own message.
    """

    def __init__(self, path: Path, *, timeout_s: float = 10.0) -> None:
        """Check the socket (raises ``SocketError``, see :func:`check_socket`), then open a
        channel on it."""
        check_socket(path)
        self.path = path
        self._timeout = timeout_s
        self._channel = grpc.insecure_channel(
            f"unix:{path}",
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        self._oip = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._local = agent_local_pb2_grpc.AgentLocalStub(self._channel)

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, what: str, call: Callable[[], _R]) -> _R:
        try:
            return call()
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (exc.details() if isinstance(exc, grpc.Call) else "") or str(code)
            raise self._error(what, code, details) from None

    def _error(self, what: str, code: grpc.StatusCode, details: str) -> AgentError:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return SocketError(f"the agent on {self.path} did not answer {what} in time")
        if code == grpc.StatusCode.UNAVAILABLE:
            # Either the connection failed, or the agent answered so (a model it cannot load
            # now): the socket tells which.
            try:
                check_socket(self.path)
            except SocketError as exc:
                return exc
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return AgentError(
                f"the agent on {self.path} does not serve {what}: it is older than this "
                "command; restart it (systemctl restart edgefleet-agent)"
            )
        kinds: dict[grpc.StatusCode, type[AgentError]] = {
            grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
            grpc.StatusCode.INVALID_ARGUMENT: InputError,
            grpc.StatusCode.RESOURCE_EXHAUSTED: QueueFullError,
        }
        return kinds.get(code, AgentError)(f"{details} ({what}: {code.name})")

    def server_ready(self) -> bool:
        return self._call(
            "ServerReady",
            lambda: self._oip.ServerReady(pb.ServerReadyRequest(), timeout=self._timeout).ready,
        )

    def index(self) -> pb.RepositoryIndexResponse:
        return self._call(
            "RepositoryIndex",
            lambda: self._oip.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=self._timeout),
        )

    def statistics(self) -> pb.ModelStatisticsResponse:
        """The loaded models' statistics (naming none: naming one would load it)."""
        return self._call(
            "ModelStatistics",
            lambda: self._oip.ModelStatistics(pb.ModelStatisticsRequest(), timeout=self._timeout),
        )

    def metadata(self, model: str) -> pb.ModelMetadataResponse:
        """A model's metadata (this loads a model registered to load on demand)."""
        return self._call(
            "ModelMetadata",
            lambda: self._oip.ModelMetadata(
                pb.ModelMetadataRequest(name=model), timeout=self._timeout
            ),
        )

    def status(self) -> agent_local_pb2.StatusResponse:
        return self._call(
            "Status (edgefleet.agent.v1)",
            lambda: self._local.Status(agent_local_pb2.StatusRequest(), timeout=self._timeout),
        )

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return self._call(
            "ModelInfer", lambda: self._oip.ModelInfer(request, timeout=self._timeout)
        )
