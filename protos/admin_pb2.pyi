from protos import manifest_pb2 as _manifest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("model_name", "version", "variant", "size", "fallback_size", "sample", "smoke_tolerance", "sign_offline", "no_compression")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SMOKE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    SIGN_OFFLINE_FIELD_NUMBER: _ClassVar[int]
    NO_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    variant: str
    size: int
    fallback_size: int
    sample: bytes
    smoke_tolerance: float
    sign_offline: bool
    no_compression: bool
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., size: _Optional[int] = ..., fallback_size: _Optional[int] = ..., sample: _Optional[bytes] = ..., smoke_tolerance: _Optional[float] = ..., sign_offline: _Optional[bool] = ..., no_compression: _Optional[bool] = ...) -> None: ...

class PushModelRequest(_message.Message):
    __slots__ = ("meta", "data", "fallback_data")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_DATA_FIELD_NUMBER: _ClassVar[int]
    meta: PushModelMeta
    data: bytes
    fallback_data: bytes
    def __init__(self, meta: _Optional[_Union[PushModelMeta, _Mapping]] = ..., data: _Optional[bytes] = ..., fallback_data: _Optional[bytes] = ...) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("model_name", "version", "variant", "release_counter", "sha256", "size", "created_unix", "edgetpu", "deployed", "fallback_sha256", "smoke_top_indices", "signed")
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
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., release_counter: _Optional[int] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., created_unix: _Optional[int] = ..., edgetpu: _Optional[bool] = ..., deployed: _Optional[bool] = ..., fallback_sha256: _Optional[str] = ..., smoke_top_indices: _Optional[_Iterable[int]] = ..., signed: _Optional[bool] = ...) -> None: ...

class PushModelResponse(_message.Message):
    __slots__ = ("model", "unsigned_manifest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersionInfo
    unsigned_manifest: bytes
    def __init__(self, model: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., unsigned_manifest: _Optional[bytes] = ...) -> None: ...

class AttachSignaturesRequest(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: _manifest_pb2.Envelope
    def __init__(self, envelope: _Optional[_Union[_manifest_pb2.Envelope, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("model_name", "version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersionInfo
    def __init__(self, model: _Optional[_Union[ModelVersionInfo, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("device_id", "name", "labels", "capabilities_json", "enrolled_unix", "last_seen_unix", "models", "last_telemetry_json", "last_telemetry_unix", "revoked_unix")
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
    CAPABILITIES_JSON_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LAST_TELEMETRY_JSON_FIELD_NUMBER: _ClassVar[int]
    LAST_TELEMETRY_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    capabilities_json: str
    enrolled_unix: int
    last_seen_unix: int
    models: _containers.RepeatedCompositeFieldContainer[DeviceModelState]
    last_telemetry_json: str
    last_telemetry_unix: int
    revoked_unix: int
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capabilities_json: _Optional[str] = ..., enrolled_unix: _Optional[int] = ..., last_seen_unix: _Optional[int] = ..., models: _Optional[_Iterable[_Union[DeviceModelState, _Mapping]]] = ..., last_telemetry_json: _Optional[str] = ..., last_telemetry_unix: _Optional[int] = ..., revoked_unix: _Optional[int] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ...) -> None: ...
