from protos import manifest_pb2 as _manifest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_STATE_UNSPECIFIED: _ClassVar[UpdateState]
    DOWNLOADING: _ClassVar[UpdateState]
    VERIFIED: _ClassVar[UpdateState]
    INSTALLED: _ClassVar[UpdateState]
    FAILED: _ClassVar[UpdateState]
    ROLLED_BACK: _ClassVar[UpdateState]
UPDATE_STATE_UNSPECIFIED: UpdateState
DOWNLOADING: UpdateState
VERIFIED: UpdateState
INSTALLED: UpdateState
FAILED: UpdateState
ROLLED_BACK: UpdateState

class Outbox(_message.Message):
    __slots__ = ("epoch", "floor", "events")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    floor: int
    events: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, epoch: _Optional[str] = ..., floor: _Optional[int] = ..., events: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("epoch", "highest", "missing")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    highest: int
    missing: _containers.RepeatedCompositeFieldContainer[SeqRange]
    def __init__(self, epoch: _Optional[str] = ..., highest: _Optional[int] = ..., missing: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ...) -> None: ...

class BenchmarkReport(_message.Message):
    __slots__ = ("model_name", "version", "sha256", "backend", "threads", "requests", "seconds", "p50_ms", "p95_ms", "throughput_per_s", "runtime")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    sha256: str
    backend: str
    threads: int
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    throughput_per_s: float
    runtime: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., backend: _Optional[str] = ..., threads: _Optional[int] = ..., requests: _Optional[int] = ..., seconds: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., throughput_per_s: _Optional[float] = ..., runtime: _Optional[str] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("arch", "cpu_cores", "memory_bytes", "disk_free_bytes", "edgetpu_count", "runtime", "runtime_version", "agent_version", "os", "edgetpus", "libedgetpu", "libedgetpu_version", "temperatures_c", "max_builtin_op", "timezone")
    class TemperaturesCEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EDGETPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    EDGETPUS_FIELD_NUMBER: _ClassVar[int]
    LIBEDGETPU_FIELD_NUMBER: _ClassVar[int]
    LIBEDGETPU_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURES_C_FIELD_NUMBER: _ClassVar[int]
    MAX_BUILTIN_OP_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    arch: str
    cpu_cores: int
    memory_bytes: int
    disk_free_bytes: int
    edgetpu_count: int
    runtime: str
    runtime_version: str
    agent_version: str
    os: str
    edgetpus: _containers.RepeatedCompositeFieldContainer[EdgeTpu]
    libedgetpu: bool
    libedgetpu_version: str
    temperatures_c: _containers.ScalarMap[str, float]
    max_builtin_op: int
    timezone: str
    def __init__(self, arch: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., edgetpu_count: _Optional[int] = ..., runtime: _Optional[str] = ..., runtime_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., os: _Optional[str] = ..., edgetpus: _Optional[_Iterable[_Union[EdgeTpu, _Mapping]]] = ..., libedgetpu: _Optional[bool] = ..., libedgetpu_version: _Optional[str] = ..., temperatures_c: _Optional[_Mapping[str, float]] = ..., max_builtin_op: _Optional[int] = ..., timezone: _Optional[str] = ...) -> None: ...

class EdgeTpu(_message.Message):
    __slots__ = ("device", "kind", "path", "state")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    device: str
    kind: str
    path: str
    state: str
    def __init__(self, device: _Optional[str] = ..., kind: _Optional[str] = ..., path: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("enrollment_token", "requested_name", "capabilities", "labels", "csr_pem")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    enrollment_token: str
    requested_name: str
    capabilities: Capabilities
    labels: _containers.ScalarMap[str, str]
    csr_pem: bytes
    def __init__(self, enrollment_token: _Optional[str] = ..., requested_name: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "fleet_id", "keylist", "mqtt_url", "certificate_pem", "ca_pem", "device_address")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    KEYLIST_FIELD_NUMBER: _ClassVar[int]
    MQTT_URL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    fleet_id: str
    keylist: _manifest_pb2.Envelope
    mqtt_url: str
    certificate_pem: bytes
    ca_pem: bytes
    device_address: str
    def __init__(self, device_id: _Optional[str] = ..., fleet_id: _Optional[str] = ..., keylist: _Optional[_Union[_manifest_pb2.Envelope, _Mapping]] = ..., mqtt_url: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., device_address: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("certificate_pem",)
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ...) -> None: ...

class ActiveModel(_message.Message):
    __slots__ = ("model_name", "version", "release_counter", "sha256", "backend")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    release_counter: int
    sha256: str
    backend: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., release_counter: _Optional[int] = ..., sha256: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("capabilities", "active", "state_version", "fresh", "refused")
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    capabilities: Capabilities
    active: _containers.RepeatedCompositeFieldContainer[ActiveModel]
    state_version: str
    fresh: bool
    refused: RefusalList
    def __init__(self, capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., active: _Optional[_Iterable[_Union[ActiveModel, _Mapping]]] = ..., state_version: _Optional[str] = ..., fresh: _Optional[bool] = ..., refused: _Optional[_Union[RefusalList, _Mapping]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("model_name", "sha256")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    sha256: str
    def __init__(self, model_name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class RefusalList(_message.Message):
    __slots__ = ("refusals",)
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    refusals: _containers.RepeatedCompositeFieldContainer[Refusal]
    def __init__(self, refusals: _Optional[_Iterable[_Union[Refusal, _Mapping]]] = ...) -> None: ...

class RefusalClear(_message.Message):
    __slots__ = ("model_name", "sha256")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    sha256: str
    def __init__(self, model_name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("desired", "next_checkin_s", "mqtt_url", "keylist", "cloud", "state_version", "unchanged", "routing", "cloud_endpoint", "clear_refusals", "log_request", "mirror_url")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHECKIN_S_FIELD_NUMBER: _ClassVar[int]
    MQTT_URL_FIELD_NUMBER: _ClassVar[int]
    KEYLIST_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_REFUSALS_FIELD_NUMBER: _ClassVar[int]
    LOG_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MIRROR_URL_FIELD_NUMBER: _ClassVar[int]
    desired: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.Envelope]
    next_checkin_s: int
    mqtt_url: str
    keylist: _manifest_pb2.Envelope
    cloud: _containers.RepeatedCompositeFieldContainer[CloudRoute]
    state_version: str
    unchanged: bool
    routing: _containers.RepeatedCompositeFieldContainer[RoutingPolicy]
    cloud_endpoint: CloudEndpoint
    clear_refusals: _containers.RepeatedCompositeFieldContainer[RefusalClear]
    log_request: LogRequest
    mirror_url: str
    def __init__(self, desired: _Optional[_Iterable[_Union[_manifest_pb2.Envelope, _Mapping]]] = ..., next_checkin_s: _Optional[int] = ..., mqtt_url: _Optional[str] = ..., keylist: _Optional[_Union[_manifest_pb2.Envelope, _Mapping]] = ..., cloud: _Optional[_Iterable[_Union[CloudRoute, _Mapping]]] = ..., state_version: _Optional[str] = ..., unchanged: _Optional[bool] = ..., routing: _Optional[_Iterable[_Union[RoutingPolicy, _Mapping]]] = ..., cloud_endpoint: _Optional[_Union[CloudEndpoint, _Mapping]] = ..., clear_refusals: _Optional[_Iterable[_Union[RefusalClear, _Mapping]]] = ..., log_request: _Optional[_Union[LogRequest, _Mapping]] = ..., mirror_url: _Optional[str] = ...) -> None: ...

class RoutingPolicy(_message.Message):
    __slots__ = ("model_name", "policy", "threshold", "latency_budget_ms", "cloud_model", "cloud_cost", "max_per_minute", "max_spend_per_day", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_COST_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEND_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    policy: str
    threshold: float
    latency_budget_ms: float
    cloud_model: str
    cloud_cost: float
    max_per_minute: int
    max_spend_per_day: float
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., policy: _Optional[str] = ..., threshold: _Optional[float] = ..., latency_budget_ms: _Optional[float] = ..., cloud_model: _Optional[str] = ..., cloud_cost: _Optional[float] = ..., max_per_minute: _Optional[int] = ..., max_spend_per_day: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class CloudEndpoint(_message.Message):
    __slots__ = ("url", "token", "ca_pem")
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    url: str
    token: str
    ca_pem: bytes
    def __init__(self, url: _Optional[str] = ..., token: _Optional[str] = ..., ca_pem: _Optional[bytes] = ...) -> None: ...

class CloudRoute(_message.Message):
    __slots__ = ("model_name", "version", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("artifact_id", "offset")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    offset: int
    def __init__(self, artifact_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadUrlRequest(_message.Message):
    __slots__ = ("artifact_id",)
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    def __init__(self, artifact_id: _Optional[str] = ...) -> None: ...

class DownloadUrl(_message.Message):
    __slots__ = ("url", "expires_in_s")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_in_s: int
    def __init__(self, url: _Optional[str] = ..., expires_in_s: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("model_name", "version", "state", "detail")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    state: UpdateState
    detail: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[_Union[UpdateState, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogRequest(_message.Message):
    __slots__ = ("id", "lines", "level")
    ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    lines: int
    level: int
    def __init__(self, id: _Optional[str] = ..., lines: _Optional[int] = ..., level: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("unix_ms", "level", "logger", "message", "previous_run")
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOGGER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RUN_FIELD_NUMBER: _ClassVar[int]
    unix_ms: int
    level: int
    logger: str
    message: str
    previous_run: bool
    def __init__(self, unix_ms: _Optional[int] = ..., level: _Optional[int] = ..., logger: _Optional[str] = ..., message: _Optional[str] = ..., previous_run: _Optional[bool] = ...) -> None: ...

class LogUpload(_message.Message):
    __slots__ = ("request_id", "records", "started_unix_ms", "previous_started_unix_ms", "dropped", "agent_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    started_unix_ms: int
    previous_started_unix_ms: int
    dropped: int
    agent_version: str
    def __init__(self, request_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ..., started_unix_ms: _Optional[int] = ..., previous_started_unix_ms: _Optional[int] = ..., dropped: _Optional[int] = ..., agent_version: _Optional[str] = ...) -> None: ...

class LogReceipt(_message.Message):
    __slots__ = ("stored", "truncated")
    STORED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    truncated: bool
    def __init__(self, stored: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...
