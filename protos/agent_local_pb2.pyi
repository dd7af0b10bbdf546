from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "scale", "zero_point")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    scale: float
    zero_point: int
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "version", "condition", "pinned", "variant", "backend", "device", "backend_reason", "routing", "routing_source", "workers", "queue_depth", "in_flight", "refused", "p50_ms", "p95_ms", "p99_ms", "cloud_requests", "inputs", "outputs", "release_counter", "previous_version", "in_health_window")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    ROUTING_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    IN_HEALTH_WINDOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    condition: str
    pinned: bool
    variant: str
    backend: str
    device: str
    backend_reason: str
    routing: str
    routing_source: str
    workers: int
    queue_depth: int
    in_flight: int
    refused: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cloud_requests: int
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    release_counter: int
    previous_version: str
    in_health_window: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., condition: _Optional[str] = ..., pinned: _Optional[bool] = ..., variant: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., backend_reason: _Optional[str] = ..., routing: _Optional[str] = ..., routing_source: _Optional[str] = ..., workers: _Optional[int] = ..., queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., refused: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., cloud_requests: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., release_counter: _Optional[int] = ..., previous_version: _Optional[str] = ..., in_health_window: _Optional[bool] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("enrolled", "device_id", "broker", "connected", "spooled", "dropped", "problem", "last_error")
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BROKER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    enrolled: bool
    device_id: str
    broker: str
    connected: bool
    spooled: int
    dropped: int
    problem: str
    last_error: str
    def __init__(self, enrolled: _Optional[bool] = ..., device_id: _Optional[str] = ..., broker: _Optional[str] = ..., connected: _Optional[bool] = ..., spooled: _Optional[int] = ..., dropped: _Optional[int] = ..., problem: _Optional[str] = ..., last_error: _Optional[str] = ...) -> None: ...

class Updates(_message.Message):
    __slots__ = ("last", "last_detail", "refused_releases", "journal_error")
    LAST_FIELD_NUMBER: _ClassVar[int]
    LAST_DETAIL_FIELD_NUMBER: _ClassVar[int]
    REFUSED_RELEASES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    last: str
    last_detail: str
    refused_releases: int
    journal_error: str
    def __init__(self, last: _Optional[str] = ..., last_detail: _Optional[str] = ..., refused_releases: _Optional[int] = ..., journal_error: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("agent_version", "uptime_s", "wedged", "models", "telemetry", "updates")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    WEDGED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    uptime_s: float
    wedged: str
    models: _containers.RepeatedCompositeFieldContainer[Model]
    telemetry: Telemetry
    updates: Updates
    def __init__(self, agent_version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., wedged: _Optional[str] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., telemetry: _Optional[_Union[Telemetry, _Mapping]] = ..., updates: _Optional[_Union[Updates, _Mapping]] = ...) -> None: ...
