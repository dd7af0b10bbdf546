from protos import device_pb2 as _device_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LatencySummary(_message.Message):
    __slots__ = ("p50_ms", "p95_ms", "p99_ms", "mean_ms")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    def __init__(self, p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ...) -> None: ...

class ModelTelemetry(_message.Message):
    __slots__ = ("model_name", "version", "backend", "requests", "errors", "latency", "window_requests", "device", "backend_reason", "rejected", "window_errors", "routing_policy", "cloud_requests", "cloud_errors", "cloud_skipped", "cloud_cost_usd", "window_cloud_requests", "window_cloud_cost_usd", "window_routed_requests", "window_compute_ms")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_REASON_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_POLICY_FIELD_NUMBER: _ClassVar[int]
    CLOUD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CLOUD_COST_USD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CLOUD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CLOUD_COST_USD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROUTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    backend: str
    requests: int
    errors: int
    latency: LatencySummary
    window_requests: int
    device: str
    backend_reason: str
    rejected: int
    window_errors: int
    routing_policy: str
    cloud_requests: int
    cloud_errors: int
    cloud_skipped: int
    cloud_cost_usd: float
    window_cloud_requests: int
    window_cloud_cost_usd: float
    window_routed_requests: int
    window_compute_ms: float
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., backend: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ..., window_requests: _Optional[int] = ..., device: _Optional[str] = ..., backend_reason: _Optional[str] = ..., rejected: _Optional[int] = ..., window_errors: _Optional[int] = ..., routing_policy: _Optional[str] = ..., cloud_requests: _Optional[int] = ..., cloud_errors: _Optional[int] = ..., cloud_skipped: _Optional[int] = ..., cloud_cost_usd: _Optional[float] = ..., window_cloud_requests: _Optional[int] = ..., window_cloud_cost_usd: _Optional[float] = ..., window_routed_requests: _Optional[int] = ..., window_compute_ms: _Optional[float] = ...) -> None: ...

class TelemetryReport(_message.Message):
    __slots__ = ("device_id", "seq", "sent_unix_ms", "models", "uptime_s", "epoch", "spool_dropped", "system", "spool_lost")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    SPOOL_LOST_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    seq: int
    sent_unix_ms: int
    models: _containers.RepeatedCompositeFieldContainer[ModelTelemetry]
    uptime_s: float
    epoch: str
    spool_dropped: int
    system: SystemTelemetry
    spool_lost: str
    def __init__(self, device_id: _Optional[str] = ..., seq: _Optional[int] = ..., sent_unix_ms: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelTelemetry, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., epoch: _Optional[str] = ..., spool_dropped: _Optional[int] = ..., system: _Optional[_Union[SystemTelemetry, _Mapping]] = ..., spool_lost: _Optional[str] = ...) -> None: ...

class SystemTelemetry(_message.Message):
    __slots__ = ("cpu_percent", "load1", "memory_used_bytes", "memory_total_bytes", "disk_free_bytes", "disk_total_bytes", "temperatures_c")
    class TemperaturesCEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURES_C_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    load1: float
    memory_used_bytes: int
    memory_total_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int
    temperatures_c: _containers.ScalarMap[str, float]
    def __init__(self, cpu_percent: _Optional[float] = ..., load1: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., disk_total_bytes: _Optional[int] = ..., temperatures_c: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DeviceState(_message.Message):
    __slots__ = ("device_id", "state", "sent_unix_ms", "agent_version", "active", "capabilities", "epoch")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    state: str
    sent_unix_ms: int
    agent_version: str
    active: _containers.RepeatedCompositeFieldContainer[_device_pb2.ActiveModel]
    capabilities: _device_pb2.Capabilities
    epoch: str
    def __init__(self, device_id: _Optional[str] = ..., state: _Optional[str] = ..., sent_unix_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., active: _Optional[_Iterable[_Union[_device_pb2.ActiveModel, _Mapping]]] = ..., capabilities: _Optional[_Union[_device_pb2.Capabilities, _Mapping]] = ..., epoch: _Optional[str] = ...) -> None: ...

class DeviceEvent(_message.Message):
    __slots__ = ("device_id", "seq", "epoch", "sent_unix_ms", "update", "ack")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    seq: int
    epoch: str
    sent_unix_ms: int
    update: _device_pb2.StatusReport
    ack: CommandAck
    def __init__(self, device_id: _Optional[str] = ..., seq: _Optional[int] = ..., epoch: _Optional[str] = ..., sent_unix_ms: _Optional[int] = ..., update: _Optional[_Union[_device_pb2.StatusReport, _Mapping]] = ..., ack: _Optional[_Union[CommandAck, _Mapping]] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("id", "kind", "ok", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    ok: bool
    detail: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("id", "kind", "issued_unix_ms", "model_name", "device_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    issued_unix_ms: int
    model_name: str
    device_id: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., issued_unix_ms: _Optional[int] = ..., model_name: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...
