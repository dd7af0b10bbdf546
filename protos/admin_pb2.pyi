from protos import device_pb2 as _device_pb2
from protos import manifest_pb2 as _manifest_pb2
from protos import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddWebhookRequest(_message.Message):
    __slots__ = ("name", "url", "events", "secret", "allow_http", "ca_pem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_HTTP_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    events: _containers.RepeatedScalarFieldContainer[str]
    secret: str
    allow_http: bool
    ca_pem: str
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., secret: _Optional[str] = ..., allow_http: _Optional[bool] = ..., ca_pem: _Optional[str] = ...) -> None: ...

class AddWebhookResponse(_message.Message):
    __slots__ = ("webhook", "secret")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    webhook: WebhookInfo
    secret: str
    def __init__(self, webhook: _Optional[_Union[WebhookInfo, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class WebhookInfo(_message.Message):
    __slots__ = ("name", "url", "events", "allow_http", "custom_ca", "created_unix", "created_by", "pending", "delivered", "failed", "dropped", "last_delivered_unix", "last_status", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_HTTP_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_CA_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    LAST_DELIVERED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    events: _containers.RepeatedScalarFieldContainer[str]
    allow_http: bool
    custom_ca: bool
    created_unix: int
    created_by: str
    pending: int
    delivered: int
    failed: int
    dropped: int
    last_delivered_unix: int
    last_status: int
    last_error: str
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., allow_http: _Optional[bool] = ..., custom_ca: _Optional[bool] = ..., created_unix: _Optional[int] = ..., created_by: _Optional[str] = ..., pending: _Optional[int] = ..., delivered: _Optional[int] = ..., failed: _Optional[int] = ..., dropped: _Optional[int] = ..., last_delivered_unix: _Optional[int] = ..., last_status: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks",)
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[WebhookInfo]
    def __init__(self, webhooks: _Optional[_Iterable[_Union[WebhookInfo, _Mapping]]] = ...) -> None: ...

class RemoveWebhookRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveWebhookResponse(_message.Message):
    __slots__ = ("pending_dropped",)
    PENDING_DROPPED_FIELD_NUMBER: _ClassVar[int]
    pending_dropped: int
    def __init__(self, pending_dropped: _Optional[int] = ...) -> None: ...

class TestWebhookRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TestWebhookResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class ListWebhookDeliveriesRequest(_message.Message):
    __slots__ = ("name", "event_id", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    event_id: str
    limit: int
    def __init__(self, name: _Optional[str] = ..., event_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class WebhookAttempt(_message.Message):
    __slots__ = ("attempt", "at_unix", "status", "error", "duration_ms")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    at_unix: int
    status: int
    error: str
    duration_ms: int
    def __init__(self, attempt: _Optional[int] = ..., at_unix: _Optional[int] = ..., status: _Optional[int] = ..., error: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("webhook", "event_id", "event_type", "created_unix", "state", "attempts", "next_unix", "log")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_UNIX_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    webhook: str
    event_id: str
    event_type: str
    created_unix: int
    state: str
    attempts: int
    next_unix: int
    log: _containers.RepeatedCompositeFieldContainer[WebhookAttempt]
    def __init__(self, webhook: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., created_unix: _Optional[int] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., next_unix: _Optional[int] = ..., log: _Optional[_Iterable[_Union[WebhookAttempt, _Mapping]]] = ...) -> None: ...

class ListWebhookDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ...) -> None: ...

class RequestBenchmarkRequest(_message.Message):
    __slots__ = ("model_name", "selector", "device_id")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    selector: _containers.ScalarMap[str, str]
    device_id: str
    def __init__(self, model_name: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., device_id: _Optional[str] = ...) -> None: ...

class RequestBenchmarkResponse(_message.Message):
    __slots__ = ("device_ids",)
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBenchReportRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class BenchRow(_message.Message):
    __slots__ = ("version", "variant", "quantization", "hardware_class", "backend", "devices", "p50_ms", "p95_ms", "throughput_per_s", "latest_unix", "source")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    LATEST_UNIX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    version: str
    variant: str
    quantization: str
    hardware_class: str
    backend: str
    devices: int
    p50_ms: float
    p95_ms: float
    throughput_per_s: float
    latest_unix: int
    source: str
    def __init__(self, version: _Optional[str] = ..., variant: _Optional[str] = ..., quantization: _Optional[str] = ..., hardware_class: _Optional[str] = ..., backend: _Optional[str] = ..., devices: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., throughput_per_s: _Optional[float] = ..., latest_unix: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class BenchReport(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[BenchRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[BenchRow, _Mapping]]] = ...) -> None: ...

class GetCostsRequest(_message.Message):
    __slots__ = ("group_by", "model_name")
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    group_by: str
    model_name: str
    def __init__(self, group_by: _Optional[str] = ..., model_name: _Optional[str] = ...) -> None: ...

class CostRow(_message.Message):
    __slots__ = ("model_name", "group", "policy", "devices", "served", "local_runs", "cloud_requests", "cost_usd", "per_million", "local_only_per_million", "cloud_only_per_million")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RUNS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ONLY_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    group: str
    policy: str
    devices: int
    served: int
    local_runs: int
    cloud_requests: int
    cost_usd: float
    per_million: float
    local_only_per_million: float
    cloud_only_per_million: float
    def __init__(self, model_name: _Optional[str] = ..., group: _Optional[str] = ..., policy: _Optional[str] = ..., devices: _Optional[int] = ..., served: _Optional[int] = ..., local_runs: _Optional[int] = ..., cloud_requests: _Optional[int] = ..., cost_usd: _Optional[float] = ..., per_million: _Optional[float] = ..., local_only_per_million: _Optional[float] = ..., cloud_only_per_million: _Optional[float] = ...) -> None: ...

class CostReport(_message.Message):
    __slots__ = ("rows", "prices", "group_by", "budgets")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[CostRow]
    prices: PriceTable
    group_by: str
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetUse]
    def __init__(self, rows: _Optional[_Iterable[_Union[CostRow, _Mapping]]] = ..., prices: _Optional[_Union[PriceTable, _Mapping]] = ..., group_by: _Optional[str] = ..., budgets: _Optional[_Iterable[_Union[BudgetUse, _Mapping]]] = ...) -> None: ...

class BudgetUse(_message.Message):
    __slots__ = ("model_name", "policy", "selector", "per_device_usd", "devices", "cloud_requests", "spent_usd", "exhausted", "top_use")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_USD_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CLOUD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_FIELD_NUMBER: _ClassVar[int]
    EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    TOP_USE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    policy: str
    selector: _containers.ScalarMap[str, str]
    per_device_usd: float
    devices: int
    cloud_requests: int
    spent_usd: float
    exhausted: int
    top_use: float
    def __init__(self, model_name: _Optional[str] = ..., policy: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., per_device_usd: _Optional[float] = ..., devices: _Optional[int] = ..., cloud_requests: _Optional[int] = ..., spent_usd: _Optional[float] = ..., exhausted: _Optional[int] = ..., top_use: _Optional[float] = ...) -> None: ...

class RoutingPolicyInfo(_message.Message):
    __slots__ = ("model_name", "selector", "policy", "threshold", "latency_budget_ms", "cloud_model", "max_per_minute", "max_spend_per_day", "updated_unix", "updated_by")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEND_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    selector: _containers.ScalarMap[str, str]
    policy: str
    threshold: float
    latency_budget_ms: float
    cloud_model: str
    max_per_minute: int
    max_spend_per_day: float
    updated_unix: int
    updated_by: str
    def __init__(self, model_name: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., policy: _Optional[str] = ..., threshold: _Optional[float] = ..., latency_budget_ms: _Optional[float] = ..., cloud_model: _Optional[str] = ..., max_per_minute: _Optional[int] = ..., max_spend_per_day: _Optional[float] = ..., updated_unix: _Optional[int] = ..., updated_by: _Optional[str] = ...) -> None: ...

class ListRoutingPoliciesRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class ListRoutingPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[RoutingPolicyInfo]
    def __init__(self, policies: _Optional[_Iterable[_Union[RoutingPolicyInfo, _Mapping]]] = ...) -> None: ...

class DeleteRoutingPolicyRequest(_message.Message):
    __slots__ = ("model_name", "selector")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    selector: _containers.ScalarMap[str, str]
    def __init__(self, model_name: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PriceTable(_message.Message):
    __slots__ = ("cloud_per_request", "energy_per_kwh", "device_power_w", "power_by_class")
    class PowerByClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLOUD_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ENERGY_PER_KWH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_BY_CLASS_FIELD_NUMBER: _ClassVar[int]
    cloud_per_request: float
    energy_per_kwh: float
    device_power_w: float
    power_by_class: _containers.ScalarMap[str, float]
    def __init__(self, cloud_per_request: _Optional[float] = ..., energy_per_kwh: _Optional[float] = ..., device_power_w: _Optional[float] = ..., power_by_class: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetPricesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class ClearRefusalRequest(_message.Message):
    __slots__ = ("device_id", "selector", "model_name", "sha256")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    selector: _containers.ScalarMap[str, str]
    model_name: str
    sha256: str
    def __init__(self, device_id: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., model_name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ClearRefusalResponse(_message.Message):
    __slots__ = ("device_ids",)
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PendingClear(_message.Message):
    __slots__ = ("model_name", "sha256", "requested_by", "requested_unix")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    sha256: str
    requested_by: str
    requested_unix: int
    def __init__(self, model_name: _Optional[str] = ..., sha256: _Optional[str] = ..., requested_by: _Optional[str] = ..., requested_unix: _Optional[int] = ...) -> None: ...

class RefusedRelease(_message.Message):
    __slots__ = ("model_name", "sha256", "version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    sha256: str
    version: str
    def __init__(self, model_name: _Optional[str] = ..., sha256: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class LabelDeviceRequest(_message.Message):
    __slots__ = ("device_id", "set", "remove")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    set: _containers.ScalarMap[str, str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class PushModelMeta(_message.Message):
    __slots__ = ("model_name", "version", "variant", "size", "fallback_size", "sample", "smoke_tolerance", "sign_offline", "no_compression", "evidence", "accuracy_floor")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SMOKE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    SIGN_OFFLINE_FIELD_NUMBER: _ClassVar[int]
    NO_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    variant: str
    size: int
    fallback_size: int
    sample: bytes
    smoke_tolerance: float
    sign_offline: bool
    no_compression: bool
    evidence: Evidence
    accuracy_floor: float
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., size: _Optional[int] = ..., fallback_size: _Optional[int] = ..., sample: _Optional[bytes] = ..., smoke_tolerance: _Optional[float] = ..., sign_offline: _Optional[bool] = ..., no_compression: _Optional[bool] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., accuracy_floor: _Optional[float] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("latency_ms", "accuracy", "top1_agreement", "source", "technique", "sparsity")
    class LatencyMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    latency_ms: _containers.ScalarMap[str, float]
    accuracy: float
    top1_agreement: float
    source: str
    technique: str
    sparsity: float
    def __init__(self, latency_ms: _Optional[_Mapping[str, float]] = ..., accuracy: _Optional[float] = ..., top1_agreement: _Optional[float] = ..., source: _Optional[str] = ..., technique: _Optional[str] = ..., sparsity: _Optional[float] = ...) -> None: ...

class PushModelRequest(_message.Message):
    __slots__ = ("meta", "data", "fallback_data", "variant")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_DATA_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    meta: PushModelMeta
    data: bytes
    fallback_data: bytes
    variant: VariantHeader
    def __init__(self, meta: _Optional[_Union[PushModelMeta, _Mapping]] = ..., data: _Optional[bytes] = ..., fallback_data: _Optional[bytes] = ..., variant: _Optional[_Union[VariantHeader, _Mapping]] = ...) -> None: ...

class VariantHeader(_message.Message):
    __slots__ = ("variant", "size", "sample", "evidence")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    size: int
    sample: bytes
    evidence: Evidence
    def __init__(self, variant: _Optional[str] = ..., size: _Optional[int] = ..., sample: _Optional[bytes] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ...) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("model_name", "version", "variant", "release_counter", "sha256", "size", "created_unix", "edgetpu", "deployed", "fallback_sha256", "smoke_top_indices", "signed", "quantization", "profile")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    EDGETPU_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SHA256_FIELD_NUMBER: _ClassVar[int]
    SMOKE_TOP_INDICES_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    variant: str
    release_counter: int
    sha256: str
    size: int
    created_unix: int
    edgetpu: bool
    deployed: bool
    fallback_sha256: str
    smoke_top_indices: _containers.RepeatedScalarFieldContainer[int]
    signed: bool
    quantization: str
    profile: VariantProfile
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., release_counter: _Optional[int] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., created_unix: _Optional[int] = ..., edgetpu: _Optional[bool] = ..., deployed: _Optional[bool] = ..., fallback_sha256: _Optional[str] = ..., smoke_top_indices: _Optional[_Iterable[int]] = ..., signed: _Optional[bool] = ..., quantization: _Optional[str] = ..., profile: _Optional[_Union[VariantProfile, _Mapping]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("dtype", "shape")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class VariantProfile(_message.Message):
    __slots__ = ("quantization", "edgetpu", "max_op_code", "memory_bytes", "activation_bytes", "inputs", "outputs", "builtin_ops", "custom_ops", "weight_dtypes", "latency_ms", "fleet_latency_ms", "accuracy", "top1_agreement", "evidence", "transport_size", "size", "fallback", "technique", "sparsity", "accuracy_floor")
    class LatencyMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FleetLatencyMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    EDGETPU_FIELD_NUMBER: _ClassVar[int]
    MAX_OP_CODE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_OPS_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_OPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DTYPES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FLEET_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    quantization: str
    edgetpu: bool
    max_op_code: int
    memory_bytes: int
    activation_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    builtin_ops: _containers.RepeatedScalarFieldContainer[str]
    custom_ops: _containers.RepeatedScalarFieldContainer[str]
    weight_dtypes: _containers.RepeatedScalarFieldContainer[str]
    latency_ms: _containers.ScalarMap[str, float]
    fleet_latency_ms: _containers.ScalarMap[str, float]
    accuracy: float
    top1_agreement: float
    evidence: str
    transport_size: int
    size: int
    fallback: VariantProfile
    technique: str
    sparsity: float
    accuracy_floor: float
    def __init__(self, quantization: _Optional[str] = ..., edgetpu: _Optional[bool] = ..., max_op_code: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., activation_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., builtin_ops: _Optional[_Iterable[str]] = ..., custom_ops: _Optional[_Iterable[str]] = ..., weight_dtypes: _Optional[_Iterable[str]] = ..., latency_ms: _Optional[_Mapping[str, float]] = ..., fleet_latency_ms: _Optional[_Mapping[str, float]] = ..., accuracy: _Optional[float] = ..., top1_agreement: _Optional[float] = ..., evidence: _Optional[str] = ..., transport_size: _Optional[int] = ..., size: _Optional[int] = ..., fallback: _Optional[_Union[VariantProfile, _Mapping]] = ..., technique: _Optional[str] = ..., sparsity: _Optional[float] = ..., accuracy_floor: _Optional[float] = ...) -> None: ...

class PushModelResponse(_message.Message):
    __slots__ = ("model", "unsigned_manifest", "variants", "unsigned_manifests", "notes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersionInfo
    unsigned_manifest: bytes
    variants: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    unsigned_manifests: _containers.RepeatedScalarFieldContainer[bytes]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., unsigned_manifest: _Optional[bytes] = ..., variants: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ..., unsigned_manifests: _Optional[_Iterable[bytes]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class AttachSignaturesRequest(_message.Message):
    __slots__ = ("envelope", "envelopes")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelope: _manifest_pb2.Envelope
    envelopes: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.Envelope]
    def __init__(self, envelope: _Optional[_Union[_manifest_pb2.Envelope, _Mapping]] = ..., envelopes: _Optional[_Iterable[_Union[_manifest_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class ListPendingManifestsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PendingManifest(_message.Message):
    __slots__ = ("model_name", "version", "variant", "action", "reason", "payload", "expires_unix")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    variant: str
    action: str
    reason: str
    payload: bytes
    expires_unix: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., payload: _Optional[bytes] = ..., expires_unix: _Optional[int] = ...) -> None: ...

class ListPendingManifestsResponse(_message.Message):
    __slots__ = ("manifests", "keylist_version", "release_threshold", "release_keyids")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    KEYLIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RELEASE_KEYIDS_FIELD_NUMBER: _ClassVar[int]
    manifests: _containers.RepeatedCompositeFieldContainer[PendingManifest]
    keylist_version: int
    release_threshold: int
    release_keyids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, manifests: _Optional[_Iterable[_Union[PendingManifest, _Mapping]]] = ..., keylist_version: _Optional[int] = ..., release_threshold: _Optional[int] = ..., release_keyids: _Optional[_Iterable[str]] = ...) -> None: ...

class ExplainVariantRequest(_message.Message):
    __slots__ = ("device_id", "model_name", "version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model_name: str
    version: str
    def __init__(self, device_id: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class VariantVerdict(_message.Message):
    __slots__ = ("variant", "quantization", "chosen", "reason")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    variant: str
    quantization: str
    chosen: bool
    reason: str
    def __init__(self, variant: _Optional[str] = ..., quantization: _Optional[str] = ..., chosen: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ExplainVariantResponse(_message.Message):
    __slots__ = ("device_id", "model_name", "version", "variant", "reason", "hardware_class", "verdicts")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model_name: str
    version: str
    variant: str
    reason: str
    hardware_class: str
    verdicts: _containers.RepeatedCompositeFieldContainer[VariantVerdict]
    def __init__(self, device_id: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., reason: _Optional[str] = ..., hardware_class: _Optional[str] = ..., verdicts: _Optional[_Iterable[_Union[VariantVerdict, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("model_name", "version", "force")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    force: bool
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class PrepareRecoveryRequest(_message.Message):
    __slots__ = ("revoke_keyids", "models", "floor")
    REVOKE_KEYIDS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    revoke_keyids: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[DeployRequest]
    floor: int
    def __init__(self, revoke_keyids: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[DeployRequest, _Mapping]]] = ..., floor: _Optional[int] = ...) -> None: ...

class PrepareRecoveryResponse(_message.Message):
    __slots__ = ("keylist_version", "unsigned_manifests", "variants", "stranded", "fleet_id")
    KEYLIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    STRANDED_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    keylist_version: int
    unsigned_manifests: _containers.RepeatedScalarFieldContainer[bytes]
    variants: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    stranded: _containers.RepeatedScalarFieldContainer[str]
    fleet_id: str
    def __init__(self, keylist_version: _Optional[int] = ..., unsigned_manifests: _Optional[_Iterable[bytes]] = ..., variants: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ..., stranded: _Optional[_Iterable[str]] = ..., fleet_id: _Optional[str] = ...) -> None: ...

class CommitRecoveryRequest(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[_manifest_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class CommitRecoveryResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("model", "note")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersionInfo
    note: str
    def __init__(self, model: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class DeviceModelState(_message.Message):
    __slots__ = ("model_name", "version", "state", "detail", "updated_unix", "active_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    state: str
    detail: str
    updated_unix: int
    active_version: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., updated_unix: _Optional[int] = ..., active_version: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("device_id", "name", "labels", "capabilities", "last_telemetry", "enrolled_unix", "last_seen_unix", "models", "last_telemetry_unix", "revoked_unix", "online_state", "online_unix", "telemetry_count", "telemetry_gaps", "events", "presence", "refused", "refusals_reported", "pending_clears", "telemetry_awaited", "telemetry_dropped", "spool_replaced", "downloads")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LAST_TELEMETRY_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ONLINE_STATE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_GAPS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_REPORTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_CLEARS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_AWAITED_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SPOOL_REPLACED_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    capabilities: _device_pb2.Capabilities
    last_telemetry: _telemetry_pb2.TelemetryReport
    enrolled_unix: int
    last_seen_unix: int
    models: _containers.RepeatedCompositeFieldContainer[DeviceModelState]
    last_telemetry_unix: int
    revoked_unix: int
    online_state: str
    online_unix: int
    telemetry_count: int
    telemetry_gaps: int
    events: _containers.RepeatedCompositeFieldContainer[DeviceEventInfo]
    presence: str
    refused: _containers.RepeatedCompositeFieldContainer[RefusedRelease]
    refusals_reported: bool
    pending_clears: _containers.RepeatedCompositeFieldContainer[PendingClear]
    telemetry_awaited: int
    telemetry_dropped: int
    spool_replaced: str
    downloads: _containers.RepeatedCompositeFieldContainer[DownloadProgress]
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Union[_device_pb2.Capabilities, _Mapping]] = ..., last_telemetry: _Optional[_Union[_telemetry_pb2.TelemetryReport, _Mapping]] = ..., enrolled_unix: _Optional[int] = ..., last_seen_unix: _Optional[int] = ..., models: _Optional[_Iterable[_Union[DeviceModelState, _Mapping]]] = ..., last_telemetry_unix: _Optional[int] = ..., revoked_unix: _Optional[int] = ..., online_state: _Optional[str] = ..., online_unix: _Optional[int] = ..., telemetry_count: _Optional[int] = ..., telemetry_gaps: _Optional[int] = ..., events: _Optional[_Iterable[_Union[DeviceEventInfo, _Mapping]]] = ..., presence: _Optional[str] = ..., refused: _Optional[_Iterable[_Union[RefusedRelease, _Mapping]]] = ..., refusals_reported: _Optional[bool] = ..., pending_clears: _Optional[_Iterable[_Union[PendingClear, _Mapping]]] = ..., telemetry_awaited: _Optional[int] = ..., telemetry_dropped: _Optional[int] = ..., spool_replaced: _Optional[str] = ..., downloads: _Optional[_Iterable[_Union[DownloadProgress, _Mapping]]] = ...) -> None: ...

class DownloadProgress(_message.Message):
    __slots__ = ("model_name", "version", "variant", "sha256", "compressed", "reached", "total", "updated_unix")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    REACHED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    variant: str
    sha256: str
    compressed: bool
    reached: int
    total: int
    updated_unix: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., sha256: _Optional[str] = ..., compressed: _Optional[bool] = ..., reached: _Optional[int] = ..., total: _Optional[int] = ..., updated_unix: _Optional[int] = ...) -> None: ...

class DeviceEventInfo(_message.Message):
    __slots__ = ("at_unix", "seq", "model_name", "version", "state", "detail")
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at_unix: int
    seq: int
    model_name: str
    version: str
    state: str
    detail: str
    def __init__(self, at_unix: _Optional[int] = ..., seq: _Optional[int] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class SendCommandRequest(_message.Message):
    __slots__ = ("device_id", "kind")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    kind: str
    def __init__(self, device_id: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class SendCommandResponse(_message.Message):
    __slots__ = ("command_id",)
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    def __init__(self, command_id: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("limit", "after")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_after")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    next_after: str
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., next_after: _Optional[str] = ...) -> None: ...

class CreateRolloutRequest(_message.Message):
    __slots__ = ("model_name", "version", "selector", "waves", "success_threshold", "failure_threshold", "pause_on_any_failure", "max_concurrent", "device_timeout_s", "allow_empty", "health_gate", "start_unix")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_ANY_FAILURE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ALLOW_EMPTY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_GATE_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    selector: _containers.ScalarMap[str, str]
    waves: _containers.RepeatedScalarFieldContainer[str]
    success_threshold: float
    failure_threshold: float
    pause_on_any_failure: bool
    max_concurrent: int
    device_timeout_s: int
    allow_empty: bool
    health_gate: HealthGate
    start_unix: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., waves: _Optional[_Iterable[str]] = ..., success_threshold: _Optional[float] = ..., failure_threshold: _Optional[float] = ..., pause_on_any_failure: _Optional[bool] = ..., max_concurrent: _Optional[int] = ..., device_timeout_s: _Optional[int] = ..., allow_empty: _Optional[bool] = ..., health_gate: _Optional[_Union[HealthGate, _Mapping]] = ..., start_unix: _Optional[int] = ...) -> None: ...

class AddMaintenanceWindowRequest(_message.Message):
    __slots__ = ("selector", "every_device", "days", "opens", "closes")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    EVERY_DEVICE_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    OPENS_FIELD_NUMBER: _ClassVar[int]
    CLOSES_FIELD_NUMBER: _ClassVar[int]
    selector: _containers.ScalarMap[str, str]
    every_device: bool
    days: str
    opens: str
    closes: str
    def __init__(self, selector: _Optional[_Mapping[str, str]] = ..., every_device: _Optional[bool] = ..., days: _Optional[str] = ..., opens: _Optional[str] = ..., closes: _Optional[str] = ...) -> None: ...

class MaintenanceWindow(_message.Message):
    __slots__ = ("window_id", "selector", "days", "opens", "closes", "created_unix", "created_by", "devices")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    OPENS_FIELD_NUMBER: _ClassVar[int]
    CLOSES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    window_id: int
    selector: _containers.ScalarMap[str, str]
    days: str
    opens: str
    closes: str
    created_unix: int
    created_by: str
    devices: int
    def __init__(self, window_id: _Optional[int] = ..., selector: _Optional[_Mapping[str, str]] = ..., days: _Optional[str] = ..., opens: _Optional[str] = ..., closes: _Optional[str] = ..., created_unix: _Optional[int] = ..., created_by: _Optional[str] = ..., devices: _Optional[int] = ...) -> None: ...

class ListMaintenanceWindowsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMaintenanceWindowsResponse(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[MaintenanceWindow]
    def __init__(self, windows: _Optional[_Iterable[_Union[MaintenanceWindow, _Mapping]]] = ...) -> None: ...

class RemoveMaintenanceWindowRequest(_message.Message):
    __slots__ = ("window_id",)
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    window_id: int
    def __init__(self, window_id: _Optional[int] = ...) -> None: ...

class HealthGate(_message.Message):
    __slots__ = ("max_error_rate", "max_latency_ratio", "window_s", "min_requests", "disabled", "bake_s")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    BAKE_S_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_latency_ratio: float
    window_s: int
    min_requests: int
    disabled: bool
    bake_s: int
    def __init__(self, max_error_rate: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., window_s: _Optional[int] = ..., min_requests: _Optional[int] = ..., disabled: _Optional[bool] = ..., bake_s: _Optional[int] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: int
    def __init__(self, rollout_id: _Optional[int] = ...) -> None: ...

class RolloutRollbackRequest(_message.Message):
    __slots__ = ("rollout_id", "envelope", "envelopes")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    rollout_id: int
    envelope: _manifest_pb2.Envelope
    envelopes: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.Envelope]
    def __init__(self, rollout_id: _Optional[int] = ..., envelope: _Optional[_Union[_manifest_pb2.Envelope, _Mapping]] = ..., envelopes: _Optional[_Iterable[_Union[_manifest_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class WaveStatus(_message.Message):
    __slots__ = ("index", "target", "devices", "waiting", "assigned", "installed", "failed", "stalled", "unhealthy", "outside_window")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    index: int
    target: int
    devices: int
    waiting: int
    assigned: int
    installed: int
    failed: int
    stalled: int
    unhealthy: int
    outside_window: int
    def __init__(self, index: _Optional[int] = ..., target: _Optional[int] = ..., devices: _Optional[int] = ..., waiting: _Optional[int] = ..., assigned: _Optional[int] = ..., installed: _Optional[int] = ..., failed: _Optional[int] = ..., stalled: _Optional[int] = ..., unhealthy: _Optional[int] = ..., outside_window: _Optional[int] = ...) -> None: ...

class RolloutInfo(_message.Message):
    __slots__ = ("rollout_id", "model_name", "version", "previous_version", "selector", "waves", "success_threshold", "failure_threshold", "max_concurrent", "device_timeout_s", "state", "current_wave", "reason", "created_unix", "updated_unix", "wave_status", "created_by", "health_gate", "failures", "start_unix", "started_unix")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WAVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    WAVE_STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_GATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    rollout_id: int
    model_name: str
    version: str
    previous_version: str
    selector: _containers.ScalarMap[str, str]
    waves: _containers.RepeatedScalarFieldContainer[str]
    success_threshold: float
    failure_threshold: float
    max_concurrent: int
    device_timeout_s: int
    state: str
    current_wave: int
    reason: str
    created_unix: int
    updated_unix: int
    wave_status: _containers.RepeatedCompositeFieldContainer[WaveStatus]
    created_by: str
    health_gate: HealthGate
    failures: _containers.RepeatedCompositeFieldContainer[DeviceFailure]
    start_unix: int
    started_unix: int
    def __init__(self, rollout_id: _Optional[int] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., waves: _Optional[_Iterable[str]] = ..., success_threshold: _Optional[float] = ..., failure_threshold: _Optional[float] = ..., max_concurrent: _Optional[int] = ..., device_timeout_s: _Optional[int] = ..., state: _Optional[str] = ..., current_wave: _Optional[int] = ..., reason: _Optional[str] = ..., created_unix: _Optional[int] = ..., updated_unix: _Optional[int] = ..., wave_status: _Optional[_Iterable[_Union[WaveStatus, _Mapping]]] = ..., created_by: _Optional[str] = ..., health_gate: _Optional[_Union[HealthGate, _Mapping]] = ..., failures: _Optional[_Iterable[_Union[DeviceFailure, _Mapping]]] = ..., start_unix: _Optional[int] = ..., started_unix: _Optional[int] = ...) -> None: ...

class DeviceFailure(_message.Message):
    __slots__ = ("device_id", "wave", "detail")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    wave: int
    detail: str
    def __init__(self, device_id: _Optional[str] = ..., wave: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutInfo]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutInfo, _Mapping]]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at_unix", "actor", "action", "target", "detail", "ok", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    at_unix: int
    actor: str
    action: str
    target: str
    detail: str
    ok: bool
    error: str
    def __init__(self, id: _Optional[int] = ..., at_unix: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., detail: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("limit", "before_id")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    limit: int
    before_id: int
    def __init__(self, limit: _Optional[int] = ..., before_id: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class GetKeyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Expiry(_message.Message):
    __slots__ = ("kind", "name", "expires_unix", "due", "advice")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    ADVICE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    expires_unix: int
    due: bool
    advice: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., expires_unix: _Optional[int] = ..., due: _Optional[bool] = ..., advice: _Optional[str] = ...) -> None: ...

class KeyStatus(_message.Message):
    __slots__ = ("root_key_folders", "items", "checked_unix", "warn_days", "deployed_manifests")
    ROOT_KEY_FOLDERS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_UNIX_FIELD_NUMBER: _ClassVar[int]
    WARN_DAYS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    root_key_folders: _containers.RepeatedScalarFieldContainer[str]
    items: _containers.RepeatedCompositeFieldContainer[Expiry]
    checked_unix: int
    warn_days: int
    deployed_manifests: int
    def __init__(self, root_key_folders: _Optional[_Iterable[str]] = ..., items: _Optional[_Iterable[_Union[Expiry, _Mapping]]] = ..., checked_unix: _Optional[int] = ..., warn_days: _Optional[int] = ..., deployed_manifests: _Optional[int] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("ttl_s", "uses", "labels", "note")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ttl_s: int
    uses: int
    labels: _containers.ScalarMap[str, str]
    note: str
    def __init__(self, ttl_s: _Optional[int] = ..., uses: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., note: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    expires_unix: int
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., expires_unix: _Optional[int] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("token_id", "created_unix", "expires_unix", "uses_left", "labels", "note", "created_by")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    USES_LEFT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    created_unix: int
    expires_unix: int
    uses_left: int
    labels: _containers.ScalarMap[str, str]
    note: str
    created_by: str
    def __init__(self, token_id: _Optional[str] = ..., created_unix: _Optional[int] = ..., expires_unix: _Optional[int] = ..., uses_left: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., note: _Optional[str] = ..., created_by: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdminsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdminInfo(_message.Message):
    __slots__ = ("name", "role", "created_unix", "created_by", "revoked_unix", "last_used_unix", "bootstrap", "cert_serial", "cert_not_after_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    created_unix: int
    created_by: str
    revoked_unix: int
    last_used_unix: int
    bootstrap: bool
    cert_serial: str
    cert_not_after_unix: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., created_unix: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_unix: _Optional[int] = ..., last_used_unix: _Optional[int] = ..., bootstrap: _Optional[bool] = ..., cert_serial: _Optional[str] = ..., cert_not_after_unix: _Optional[int] = ...) -> None: ...

class ListAdminsResponse(_message.Message):
    __slots__ = ("admins", "bootstrap_enabled", "bootstrap_until_unix")
    ADMINS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_ENABLED_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_UNTIL_UNIX_FIELD_NUMBER: _ClassVar[int]
    admins: _containers.RepeatedCompositeFieldContainer[AdminInfo]
    bootstrap_enabled: bool
    bootstrap_until_unix: int
    def __init__(self, admins: _Optional[_Iterable[_Union[AdminInfo, _Mapping]]] = ..., bootstrap_enabled: _Optional[bool] = ..., bootstrap_until_unix: _Optional[int] = ...) -> None: ...

class CreateAdminRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class SetAdminRoleRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AdminCertificateRequest(_message.Message):
    __slots__ = ("name", "csr_pem", "days")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    csr_pem: bytes
    days: int
    def __init__(self, name: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., days: _Optional[int] = ...) -> None: ...

class AdminCertificateResponse(_message.Message):
    __slots__ = ("admin", "cert_pem", "ca_pem")
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    admin: AdminInfo
    cert_pem: bytes
    ca_pem: bytes
    def __init__(self, admin: _Optional[_Union[AdminInfo, _Mapping]] = ..., cert_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ...) -> None: ...

class AdminTokenResponse(_message.Message):
    __slots__ = ("admin", "token")
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    admin: AdminInfo
    token: str
    def __init__(self, admin: _Optional[_Union[AdminInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class DeleteModelVersionRequest(_message.Message):
    __slots__ = ("model_name", "version", "force")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    force: bool
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class PruneModelsRequest(_message.Message):
    __slots__ = ("model_name", "keep", "dry_run")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    keep: int
    dry_run: bool
    def __init__(self, model_name: _Optional[str] = ..., keep: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DeleteModelsResponse(_message.Message):
    __slots__ = ("deleted", "kept", "files", "freed_bytes")
    class KeptEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DELETED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    kept: _containers.ScalarMap[str, str]
    files: int
    freed_bytes: int
    def __init__(self, deleted: _Optional[_Iterable[str]] = ..., kept: _Optional[_Mapping[str, str]] = ..., files: _Optional[int] = ..., freed_bytes: _Optional[int] = ...) -> None: ...

class RequestDeviceLogRequest(_message.Message):
    __slots__ = ("device_id", "lines", "level")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    lines: int
    level: int
    def __init__(self, device_id: _Optional[str] = ..., lines: _Optional[int] = ..., level: _Optional[int] = ...) -> None: ...

class DeviceLog(_message.Message):
    __slots__ = ("device_id", "request_id", "requested_by", "requested_unix", "lines", "level", "pending", "received_for", "received_unix", "records", "truncated", "dropped", "started_unix_ms", "previous_started_unix_ms", "agent_version", "asked_now")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FOR_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ASKED_NOW_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    request_id: str
    requested_by: str
    requested_unix: int
    lines: int
    level: int
    pending: bool
    received_for: str
    received_unix: int
    records: _containers.RepeatedCompositeFieldContainer[_device_pb2.LogRecord]
    truncated: bool
    dropped: int
    started_unix_ms: int
    previous_started_unix_ms: int
    agent_version: str
    asked_now: bool
    def __init__(self, device_id: _Optional[str] = ..., request_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., requested_unix: _Optional[int] = ..., lines: _Optional[int] = ..., level: _Optional[int] = ..., pending: _Optional[bool] = ..., received_for: _Optional[str] = ..., received_unix: _Optional[int] = ..., records: _Optional[_Iterable[_Union[_device_pb2.LogRecord, _Mapping]]] = ..., truncated: _Optional[bool] = ..., dropped: _Optional[int] = ..., started_unix_ms: _Optional[int] = ..., previous_started_unix_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., asked_now: _Optional[bool] = ...) -> None: ...
