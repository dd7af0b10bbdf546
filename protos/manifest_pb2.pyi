from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Manifest(_message.Message):
    __slots__ = ("model_name", "version", "release_counter", "variant", "sha256", "size", "artifact_id", "created_unix", "expires_unix", "fleet_id", "requirements", "cpu_fallback", "smoke", "compressed", "explicit_rollback", "rollback_from", "recovery_keylist_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    CPU_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    SMOKE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FROM_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_KEYLIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    release_counter: int
    variant: str
    sha256: str
    size: int
    artifact_id: str
    created_unix: int
    expires_unix: int
    fleet_id: str
    requirements: Requirements
    cpu_fallback: ArtifactRef
    smoke: SmokeTest
    compressed: ArtifactRef
    explicit_rollback: bool
    rollback_from: int
    recovery_keylist_version: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., release_counter: _Optional[int] = ..., variant: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., artifact_id: _Optional[str] = ..., created_unix: _Optional[int] = ..., expires_unix: _Optional[int] = ..., fleet_id: _Optional[str] = ..., requirements: _Optional[_Union[Requirements, _Mapping]] = ..., cpu_fallback: _Optional[_Union[ArtifactRef, _Mapping]] = ..., smoke: _Optional[_Union[SmokeTest, _Mapping]] = ..., compressed: _Optional[_Union[ArtifactRef, _Mapping]] = ..., explicit_rollback: _Optional[bool] = ..., rollback_from: _Optional[int] = ..., recovery_keylist_version: _Optional[int] = ...) -> None: ...

class SmokeTest(_message.Message):
    __slots__ = ("sample", "top_indices", "top_scores", "tolerance")
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TOP_INDICES_FIELD_NUMBER: _ClassVar[int]
    TOP_SCORES_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    sample: ArtifactRef
    top_indices: _containers.RepeatedScalarFieldContainer[int]
    top_scores: _containers.RepeatedScalarFieldContainer[float]
    tolerance: float
    def __init__(self, sample: _Optional[_Union[ArtifactRef, _Mapping]] = ..., top_indices: _Optional[_Iterable[int]] = ..., top_scores: _Optional[_Iterable[float]] = ..., tolerance: _Optional[float] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("artifact_id", "sha256", "size", "variant")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    sha256: str
    size: int
    variant: str
    def __init__(self, artifact_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., variant: _Optional[str] = ...) -> None: ...

class Requirements(_message.Message):
    __slots__ = ("edgetpu", "min_memory_bytes", "min_disk_bytes", "quantization", "max_op_code")
    EDGETPU_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_OP_CODE_FIELD_NUMBER: _ClassVar[int]
    edgetpu: bool
    min_memory_bytes: int
    min_disk_bytes: int
    quantization: str
    max_op_code: int
    def __init__(self, edgetpu: _Optional[bool] = ..., min_memory_bytes: _Optional[int] = ..., min_disk_bytes: _Optional[int] = ..., quantization: _Optional[str] = ..., max_op_code: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("payload_type", "payload", "signatures")
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    payload_type: str
    payload: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    def __init__(self, payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ...) -> None: ...

class EnvelopeSet(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("keyid", "sig")
    KEYID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    keyid: str
    sig: bytes
    def __init__(self, keyid: _Optional[str] = ..., sig: _Optional[bytes] = ...) -> None: ...

class PublicKey(_message.Message):
    __slots__ = ("keyid", "public_key", "expires_unix")
    KEYID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    keyid: str
    public_key: bytes
    expires_unix: int
    def __init__(self, keyid: _Optional[str] = ..., public_key: _Optional[bytes] = ..., expires_unix: _Optional[int] = ...) -> None: ...

class KeyList(_message.Message):
    __slots__ = ("version", "expires_unix", "fleet_id", "root_keys", "root_threshold", "release_keys", "release_threshold", "revoked_keyids")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_KEYS_FIELD_NUMBER: _ClassVar[int]
    ROOT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RELEASE_KEYS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REVOKED_KEYIDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    expires_unix: int
    fleet_id: str
    root_keys: _containers.RepeatedCompositeFieldContainer[PublicKey]
    root_threshold: int
    release_keys: _containers.RepeatedCompositeFieldContainer[PublicKey]
    release_threshold: int
    revoked_keyids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., expires_unix: _Optional[int] = ..., fleet_id: _Optional[str] = ..., root_keys: _Optional[_Iterable[_Union[PublicKey, _Mapping]]] = ..., root_threshold: _Optional[int] = ..., release_keys: _Optional[_Iterable[_Union[PublicKey, _Mapping]]] = ..., release_threshold: _Optional[int] = ..., revoked_keyids: _Optional[_Iterable[str]] = ...) -> None: ...
