"""Receiving a pushed release: every variant stored, inspected, smoke-expected and signed, or
nothing kept at all.

The PushModel stream is: ``meta`` (the first variant, optionally with a CPU fallback), its
``data``, the fallback's ``fallback_data``, then for each further variant a ``variant`` header
and its ``data``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ModelFileError
from agent.inference.modelfile import MAX_MODEL_BYTES, ModelInfo, inspect_model_file
from fleet_server.artifacts.store import Artifacts
from fleet_server.catalog.naming import TECHNIQUES, variant_name
from fleet_server.catalog.select import PREFERENCE
from fleet_server.catalog.smoke import SmokeExpectation, expect
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import AlreadyExistsError, BadRequestError
from fleet_server.signing.keys import KeyStore, ManifestSigner
from protos import admin_pb2 as pb
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE
from protos.names import is_name

__all__ = ["MANIFEST_LIFETIME_S", "MAX_VARIANTS", "Pusher", "requirements_of"]

log = logging.getLogger(__name__)
MANIFEST_LIFETIME_S = 365 * 24 * 3600
# A whole build: float32, 5 quantized, int8-uint8io, edgetpu, and 2 per --prune (at most 4).
MAX_VARIANTS = 16
# Semantic version: MAJOR.MINOR.PATCH with optional -prerelease and +build.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?"
)
_VARIANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # fullmatch: a trailing newline is none


def requirements_of(info: ModelInfo, fallback: ModelInfo | None = None) -> dict[str, object]:
    """What the server derives from a model file (and its CPU fallback), kept with the variant
    as JSON."""
    result: dict[str, object] = {
        "quantization": info.quantization,
        "edgetpu": info.edgetpu,
        "max_op_code": info.max_op_code,
        "memory_bytes": info.size + info.activation_bytes,
        "activation_bytes": info.activation_bytes,
        "inputs": [[t.dtype, list(t.shape)] for t in info.inputs],
        "outputs": [[t.dtype, list(t.shape)] for t in info.outputs],
        "builtin_ops": list(info.builtin_ops),
        "custom_ops": list(info.custom_ops),
        "weight_dtypes": list(info.weight_dtypes),
    }
    if fallback is not None:
        result["fallback"] = requirements_of(fallback) | {"size": fallback.size}
    return result


def _inspect(path: Path, what: str) -> ModelInfo:
    try:
        return inspect_model_file(path)
    except ModelFileError as exc:
        raise BadRequestError(f"rejected {what}: {str(exc).split(': ', 1)[-1]}") from exc


def _named(upload: _Upload) -> str:
    """How errors name an upload: its variant; unnamed, "the model" (the push's first file) or
    "model file N" (its N-th), which the CLI turns back into the caller's file name."""
    if upload.variant:
        return f"variant {upload.variant}"
    return "the model" if upload.position == 1 else f"model file {upload.position}"


def _io(info: ModelInfo) -> list[tuple[str, tuple[int, ...]]]:
    return [(t.dtype, t.shape) for t in (*info.inputs, *info.outputs)]


def _shapes(info: ModelInfo) -> list[tuple[int, ...]]:
    return [t.shape for t in (*info.inputs, *info.outputs)]


@dataclass
class _Upload:
    """One variant as it arrives and is checked."""

    variant: str
    size: int
    sample: bytes
    position: int = 1  # 1-based, in the order the push sent it
    sha256: str = ""
    path: Path = Path()
    info: ModelInfo | None = None
    fallback: tuple[str, int, Path] | None = None  # (sha256, size, path)
    fallback_info: ModelInfo | None = None
    fallback_variant: str = ""  # the paired variant's name (what the device reports serving)
    smoke: SmokeExpectation | None = None
    sample_ref: tuple[str, int] = ("", 0)
    packed: tuple[str, int, Path] | None = None
    stored: list[tuple[str, Path]] = field(default_factory=list)
    evidence: dict[str, object] = field(default_factory=dict)

    @property
    def model(self) -> ModelInfo:
        if self.info is None:  # pragma: no cover - _receive sets it before anything reads it
            raise BadRequestError(f"variant {self.variant} was not received")
        return self.info


def _evidence(part: pb.PushModelMeta | pb.VariantHeader) -> dict[str, object]:
    """Measurements sent with a variant, checked, as requirement fields selection reads.

    Raises:
        BadRequestError: out-of-range numbers or too many hardware classes.
    """
    if not part.HasField("evidence"):
        return {}
    e = part.evidence
    if len(e.latency_ms) > 64:
        raise BadRequestError("evidence names more than 64 hardware classes")
    for name, ms in e.latency_ms.items():
        if not 0 < len(name) <= 64 or not 0 < ms < 1e7:
            raise BadRequestError(f"evidence latency {name!r}: {ms} ms is out of range")
    result: dict[str, object] = {"latency_ms": dict(e.latency_ms)} if e.latency_ms else {}
    for key in ("accuracy", "top1_agreement"):
        if e.HasField(key):
            value = getattr(e, key)
            if not 0 <= value <= 1:
                raise BadRequestError(f"evidence {key} {value} is outside 0..1")
            result[key] = value
    if e.source:
        result["evidence"] = e.source[:256]
    if e.technique:
        if e.technique not in TECHNIQUES:
            raise BadRequestError(
                f"evidence technique {e.technique[:40]!r} is not one of "
                f"{', '.join(t for t in TECHNIQUES if t)}"
            )
        result["technique"] = e.technique
    if e.HasField("sparsity"):
        if not 0 <= e.sparsity <= 1:
            raise BadRequestError(f"evidence sparsity {e.sparsity} is outside 0..1")
        result["sparsity"] = e.sparsity
    return result


def _named_evidence(
    part: pb.PushModelMeta | pb.VariantHeader, upload: _Upload
) -> dict[str, object]:
    """``_evidence``, its refusal naming the upload (a build directory pushes many)."""
    try:
        return _evidence(part)
    except BadRequestError as exc:
        raise BadRequestError(f"{_named(upload)}: {exc}") from exc


class _Stream:
    """The PushModel messages with one message of look-ahead."""

    def __init__(self, messages: Iterator[pb.PushModelRequest]) -> None:
        self._messages = messages
        self._pending: pb.PushModelRequest | None = None

    def _next(self) -> pb.PushModelRequest | None:
        message, self._pending = self._pending, None
        return message if message is not None else next(self._messages, None)

    def chunks(self, part: str) -> Iterator[bytes]:
        """The payloads of consecutive ``part`` messages; stops before any other part."""
        while (message := self._next()) is not None:
            if message.WhichOneof("part") != part:
                self._pending = message
                return
            yield getattr(message, part)

    def header(self) -> pb.VariantHeader | None:
        """The next variant header, or None at the end of the stream."""
        message = self._next()
        if message is None:
            return None
        if message.WhichOneof("part") != "variant":
            raise BadRequestError(
                f"unexpected {message.WhichOneof('part')}: after a variant's data comes the "
                "next variant's header"
            )
        return message.variant


class Pusher:
    """Turns a PushModel stream into a stored, signed release."""

    def __init__(
        self,
        catalog: CatalogStore,
        artifacts: Artifacts,
        keys: KeyStore,
        fleet_id: str,
        lifetime_s: int = MANIFEST_LIFETIME_S,
    ) -> None:
        """``lifetime_s``: how long the manifests it signs are valid (--manifest-lifetime-days)."""
        self._lifetime_s = lifetime_s
        self._catalog = catalog
        self._artifacts = artifacts
        self._keys = keys
        self._fleet_id = fleet_id
        self._lock = threading.Lock()

    def push(
        self, meta: pb.PushModelMeta, messages: Iterator[pb.PushModelRequest]
    ) -> tuple[list[ModelRow], list[bytes]]:
        """Store every variant of the release; return the rows and, with ``sign_offline``, the
        manifests to sign (else an empty list).

        Raises:
            BadRequestError: invalid names, sizes, files or variants.
            AlreadyExistsError: the version exists.
        """
        _check_meta(meta)
        # Fail before storing anything when nothing here could sign, or the version exists.
        signer = None if meta.sign_offline else self._keys.manifest_signer()
        if self._catalog.model_exists(meta.model_name, meta.version):
            deleted = not self._catalog.variants_of([(meta.model_name, meta.version)])
            raise AlreadyExistsError(
                f"model {meta.model_name} version {meta.version} "
                + ("was deleted; a version is never reused" if deleted else "exists already")
                + ": versions are immutable, push a new version"
            )
        stream = _Stream(messages)
        uploads: list[_Upload] = []
        try:
            first = _Upload(meta.variant, meta.size, meta.sample)
            first.evidence = _named_evidence(meta, first)
            uploads.append(first)
            self._receive(first, stream)
            if meta.fallback_size:
                self._receive_fallback(first, stream, meta.fallback_size)
            while (header := stream.header()) is not None:
                upload = _Upload(
                    header.variant,
                    header.size,
                    header.sample,
                    position=len(uploads) + 1,
                )
                upload.evidence = _named_evidence(header, upload)
                _check_variant(upload, uploads)
                uploads.append(upload)
                self._receive(upload, stream)
            _name_variants(uploads)
            _check_consistent(uploads)
            _pair_fallbacks(uploads)
            for upload in uploads:
                try:
                    self._prepare(upload, meta)
                except BadRequestError as exc:
                    if len(uploads) == 1:
                        raise
                    raise BadRequestError(f"{_named(upload)}: {exc}") from exc
        except BaseException:
            self._discard([s for u in uploads for s in u.stored])
            raise
        # One counter per release in this process; across replicas the unique index decides.
        with self._lock:
            try:
                return self._record(meta, uploads, signer)
            except BaseException:
                self._discard([s for u in uploads for s in u.stored])
                raise

    def _receive(self, upload: _Upload, stream: _Stream) -> None:
        if upload.size == 0 or upload.size > MAX_MODEL_BYTES:
            raise BadRequestError(
                f"{_named(upload)}: size {upload.size} is outside 1..{MAX_MODEL_BYTES} bytes"
            )
        sha256, size, path = self._artifacts.put(stream.chunks("data"), max_bytes=upload.size)
        upload.stored.append((sha256, path))
        if size != upload.size:
            raise BadRequestError(
                f"{_named(upload)}: announced {upload.size} bytes, received {size}"
            )
        upload.sha256, upload.path = sha256, path
        upload.info = _inspect(path, _named(upload))

    def _receive_fallback(self, upload: _Upload, stream: _Stream, announced: int) -> None:
        if announced > MAX_MODEL_BYTES:
            raise BadRequestError(f"fallback size {announced} is over {MAX_MODEL_BYTES}")
        sha256, size, path = self._artifacts.put(
            stream.chunks("fallback_data"), max_bytes=announced
        )
        upload.stored.append((sha256, path))
        if size != announced:
            raise BadRequestError(f"announced a {announced}-byte fallback, received {size}")
        upload.fallback_info = _inspect(path, "the CPU fallback")
        _check_fallback(upload.model, upload.fallback_info)
        upload.fallback = (sha256, size, path)

    def _prepare(self, upload: _Upload, meta: pb.PushModelMeta) -> None:
        """Smoke expectation (run where a CPU can run it) and the compressed copy."""
        info = upload.model
        runnable = upload.fallback[2] if upload.fallback else None
        smoke = expect(
            info, runnable if info.edgetpu else upload.path, upload.sample, meta.smoke_tolerance
        )
        upload.smoke = smoke
        sample_sha, sample_size, sample_path = self._artifacts.put(
            [smoke.sample], max_bytes=len(smoke.sample)
        )
        upload.stored.append((sample_sha, sample_path))
        upload.sample_ref = (sample_sha, sample_size)
        if not meta.no_compression:
            upload.packed = self._artifacts.put_compressed(upload.path)
            if upload.packed is not None:
                upload.stored.append((upload.packed[0], upload.packed[2]))

    def _record(
        self, meta: pb.PushModelMeta, uploads: list[_Upload], signer: ManifestSigner | None
    ) -> tuple[list[ModelRow], list[bytes]]:
        now = int(time.time())
        counter = self._catalog.next_release_counter(meta.model_name)
        rows: list[ModelRow] = []
        unsigned: list[bytes] = []
        floor: dict[str, object] = (
            {"accuracy_floor": meta.accuracy_floor} if meta.HasField("accuracy_floor") else {}
        )
        for upload in uploads:
            manifest = self._manifest(meta, upload, counter, now)
            if signer is not None:
                envelope = signer.sign(manifest)
            else:
                envelope = manifest_pb2.Envelope(
                    payload_type=MANIFEST_PAYLOAD_TYPE,
                    payload=manifest.SerializeToString(deterministic=True),
                )
                unsigned.append(envelope.payload)
            rows.append(
                ModelRow(
                    model_name=meta.model_name,
                    version=meta.version,
                    variant=upload.variant,
                    release_counter=counter,
                    sha256=upload.sha256,
                    size=upload.size,
                    edgetpu=upload.model.edgetpu,
                    envelope=envelope.SerializeToString(),
                    created_at=now,
                    fallback_sha256=upload.fallback[0] if upload.fallback else None,
                    sample_sha256=upload.sample_ref[0],
                    compressed_sha256=upload.packed[0] if upload.packed else None,
                    quantization=upload.model.quantization,
                    requirements=json.dumps(
                        requirements_of(upload.model, upload.fallback_info)
                        | upload.evidence
                        | floor
                        | ({"transport_size": upload.packed[1]} if upload.packed else {}),
                        sort_keys=True,
                    ),
                )
            )
        self._catalog.add_release(rows)
        log.info(
            "pushed %s %s (release %d): %s",
            meta.model_name,
            meta.version,
            counter,
            ", ".join(f"{r.variant} {r.quantization} {r.size} bytes" for r in rows),
        )
        return rows, unsigned

    def _manifest(
        self, meta: pb.PushModelMeta, upload: _Upload, counter: int, now: int
    ) -> manifest_pb2.Manifest:
        info = upload.model
        smoke = upload.smoke or SmokeExpectation(b"", [], [], 0.0)
        manifest = manifest_pb2.Manifest(
            model_name=meta.model_name,
            version=meta.version,
            release_counter=counter,
            variant=upload.variant,
            sha256=upload.sha256,
            size=upload.size,
            artifact_id=upload.sha256,
            created_unix=now,
            expires_unix=now + self._lifetime_s,
            fleet_id=self._fleet_id,
            requirements=manifest_pb2.Requirements(
                edgetpu=info.edgetpu,
                min_memory_bytes=info.size + info.activation_bytes,
                min_disk_bytes=upload.size + (upload.fallback[1] if upload.fallback else 0),
                quantization=info.quantization,
                max_op_code=info.max_op_code,
            ),
        )
        sample_sha, sample_size = upload.sample_ref
        manifest.smoke.CopyFrom(
            manifest_pb2.SmokeTest(
                sample=manifest_pb2.ArtifactRef(
                    artifact_id=sample_sha, sha256=sample_sha, size=sample_size, variant="sample"
                ),
                top_indices=smoke.indices,
                top_scores=smoke.scores,
                tolerance=smoke.tolerance,
            )
        )
        if upload.packed is not None:
            manifest.compressed.CopyFrom(
                manifest_pb2.ArtifactRef(
                    artifact_id=upload.packed[0],
                    sha256=upload.packed[0],
                    size=upload.packed[1],
                    variant="zstd",
                )
            )
        if upload.fallback is not None:
            manifest.cpu_fallback.CopyFrom(
                manifest_pb2.ArtifactRef(
                    artifact_id=upload.fallback[0],
                    sha256=upload.fallback[0],
                    size=upload.fallback[1],
                    variant=upload.fallback_variant or _fallback_name(upload.fallback_info),
                )
            )
        return manifest

    def _discard(self, stored: list[tuple[str, Path]]) -> None:
        """Remove artifacts of a push that failed, unless another version uses them."""
        for digest, path in stored:
            if self._catalog.model_by_sha(digest) is None:
                path.unlink(missing_ok=True)


def _check_meta(meta: pb.PushModelMeta) -> None:
    if not is_name(meta.model_name):
        raise BadRequestError(
            f"model name {meta.model_name!r} is invalid: use 1-64 of A-Z a-z 0-9 _ . -"
        )
    if not _SEMVER.fullmatch(meta.version) or len(meta.version) > 32:
        raise BadRequestError(f"version {meta.version!r} is not a semantic version like 1.0.0")
    if meta.variant and not _VARIANT.fullmatch(meta.variant):
        raise BadRequestError(f"variant {meta.variant!r} is invalid")
    if meta.HasField("accuracy_floor") and not 0 <= meta.accuracy_floor <= 1:
        raise BadRequestError(f"accuracy floor {meta.accuracy_floor} is outside 0..1")


def _fallback_name(info: ModelInfo | None) -> str:
    """An explicit fallback's variant name, from its quantization like an unnamed variant's."""
    return variant_name(info.quantization, "cpu") if info is not None else "cpu"


def _name_variants(uploads: list[_Upload]) -> None:
    """Name unnamed variants after their kind (int8, edgetpu, float32...)."""
    for upload in uploads:
        if not upload.variant:
            upload.variant = variant_name(upload.model.quantization)
    names = [u.variant for u in uploads]
    for name in names:
        if names.count(name) > 1:
            raise BadRequestError(f"two variants are both named {name!r}; name them with --variant")


def _check_variant(upload: _Upload, earlier: list[_Upload]) -> None:
    if upload.variant and not _VARIANT.fullmatch(upload.variant):
        raise BadRequestError(
            f"variant {upload.variant!r} is invalid: use 1-32 of a-z 0-9 _ -, starting with a "
            "letter or digit"
        )
    if len(earlier) >= MAX_VARIANTS:
        raise BadRequestError(f"more than {MAX_VARIANTS} variants in one push")


def _check_consistent(uploads: list[_Upload]) -> None:
    """Variants of one release answer the same question: same input and output shapes."""
    first = uploads[0]
    for upload in uploads[1:]:
        if _shapes(upload.model) != _shapes(first.model):
            raise BadRequestError(
                f"variant {upload.variant}'s input and output shapes {_shapes(upload.model)} "
                f"differ from {first.variant}'s {_shapes(first.model)}; variants of one version "
                "must be the same model"
            )


def _check_fallback(model: ModelInfo, fallback: ModelInfo) -> None:
    """A CPU fallback must stand in for an Edge TPU model with the same inputs and outputs."""
    if not model.edgetpu:
        raise BadRequestError(
            "a CPU fallback is for Edge TPU-compiled models; this one runs on CPU"
        )
    if fallback.edgetpu:
        raise BadRequestError("the CPU fallback is itself compiled for the Edge TPU")
    if _io(model) != _io(fallback):
        raise BadRequestError(
            f"the CPU fallback's inputs and outputs {_io(fallback)} differ from the model's "
            f"{_io(model)}"
        )


def _pair_fallbacks(uploads: list[_Upload]) -> None:
    """An Edge TPU variant without an explicit fallback travels with the best CPU variant of
    the same release that has exactly its inputs and outputs (served when the TPU fails)."""
    cpu = [u for u in uploads if not u.model.edgetpu]
    cpu.sort(key=lambda u: PREFERENCE.index(u.model.quantization))
    for upload in uploads:
        if not upload.model.edgetpu or upload.fallback is not None:
            continue
        for candidate in cpu:
            if _io(candidate.model) == _io(upload.model):
                upload.fallback = (candidate.sha256, candidate.size, candidate.path)
                upload.fallback_info = candidate.model
                upload.fallback_variant = candidate.variant
                break
