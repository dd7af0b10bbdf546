"""A device's desired state: which version of each model (fleet-wide deployment, overridden by
the newest rollout that reached the device), then which variant of it (variant selection), or
the cloud when no variant fits.

A device held by a closed maintenance window is not told a version a rollout assigned it but
it does not run yet (:func:`held_rows`): it keeps what it had until one of its windows opens
(a device told inside its window and offline until after it closed hears of it then).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fleet_server.catalog.select import (
    DEFAULT_POLICY,
    Choice,
    DeviceProfile,
    Policy,
    Variant,
    choose,
)
from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.rollouts.states import TICKING, DeviceState, RolloutState
from fleet_server.rollouts.store import DesiredRow, RolloutStore, in_effect
from protos import manifest_pb2

__all__ = [
    "Explained",
    "Resolved",
    "Target",
    "device_targets",
    "explain",
    "held_rows",
    "resolve",
    "targets_for",
    "variant_of",
]


@dataclass(frozen=True)
class Target:
    """The version a device should run, and the explicit rollback's manifests if it is one."""

    model_name: str
    version: str
    rollback: bytes | None = None  # a serialized EnvelopeSet


@dataclass
class Resolved:
    """Per model: the signed manifest to install, or a cloud route with the reason."""

    envelopes: dict[str, bytes] = field(default_factory=dict)
    cloud: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, why)
    choices: dict[str, Choice] = field(default_factory=dict)


def held_rows(rows: Sequence[DesiredRow], active: Mapping[str, str]) -> list[DesiredRow]:
    """The assignments a closed maintenance window holds back: devices told to update by a
    running, paused or completed rollout that do not run its version yet (``active``: model ->
    the version the device reports). A rollback is never held."""
    return [
        r
        for r in rows
        if r.device_state == DeviceState.ASSIGNED
        and r.rollout_state in TICKING
        and active.get(r.model_name) != r.version
    ]


def targets_for(
    deployments: Mapping[str, tuple[str, bytes | None]],
    rows: Sequence[DesiredRow],
    held: Sequence[DesiredRow] = (),
) -> dict[str, Target]:
    """The fleet-wide deployments, overridden by the newest rollout assignment in effect
    (but the ``held`` ones)."""
    targets = {
        name: Target(name, version, rollback) for name, (version, rollback) in deployments.items()
    }
    skipped = {r.rollout_id for r in held}
    for row in rows:  # oldest first: the newest wins
        if in_effect(row) and row.rollout_id not in skipped:
            rollback = (
                row.rollback_envelope if row.rollout_state == RolloutState.ROLLED_BACK else None
            )
            version = row.version
            if rollback is not None:
                version = _version_of(rollback) or version
            targets[row.model_name] = Target(row.model_name, version, rollback)
    return targets


def _version_of(envelope_set: bytes) -> str:
    envelopes = manifest_pb2.EnvelopeSet.FromString(envelope_set).envelopes
    if not envelopes:
        return ""
    return manifest_pb2.Manifest.FromString(envelopes[0].payload).version


def variant_of(row: ModelRow) -> Variant:
    """What selection knows about a stored variant."""
    req = json.loads(row.requirements or "{}")
    fallback = None
    if row.fallback_sha256:
        # Rows from before schema 10 know nothing of their fallback: assume it fits.
        fb = req.get("fallback", {})
        fallback = _variant(f"{row.variant}-fallback", fb.get("quantization", ""), fb, 0)
    return _variant(
        row.variant,
        row.quantization or ("edgetpu" if row.edgetpu else ""),
        req,
        row.size,
        fallback,
    )


def _variant(
    name: str,
    quantization: str,
    req: Mapping[str, Any],
    size: int,
    fallback: Variant | None = None,
) -> Variant:
    return Variant(
        variant=name,
        quantization=quantization,
        size=int(req.get("size", size)),
        memory_bytes=int(req.get("memory_bytes", size)),
        max_op_code=int(req.get("max_op_code", 0)),
        # The fleet's own benchmarks of a hardware class win over a build host's.
        latency_ms={
            str(k): float(v)
            for k, v in (req.get("latency_ms", {}) | req.get("fleet_latency_ms", {})).items()
        },
        accuracy=float(req["accuracy"]) if req.get("accuracy") is not None else None,
        fallback=fallback,
        technique=str(req.get("technique", "")),
        transport_size=int(req.get("transport_size", 0)),
    )


def policy_of(rows: Sequence[ModelRow], policy: Policy = DEFAULT_POLICY) -> Policy:
    """``policy`` with the accuracy floor pushed with the version (``models push
    --accuracy-floor``, or the build's --min-accuracy), if any: the stricter of the two."""
    floors = [json.loads(r.requirements or "{}").get("accuracy_floor") for r in rows]
    known = [float(f) for f in floors if isinstance(f, int | float)]
    if policy.accuracy_floor is not None:
        known.append(policy.accuracy_floor)
    return replace(policy, accuracy_floor=max(known)) if known else policy


def resolve(
    catalog: CatalogStore,
    targets: Mapping[str, Target],
    device: DeviceProfile,
    policy: Policy = DEFAULT_POLICY,
) -> Resolved:
    """Choose a variant of every target for this device."""
    resolved = Resolved()
    variants = catalog.variants_of([(t.model_name, t.version) for t in targets.values()])
    for name, target in sorted(targets.items()):
        rows = variants.get((name, target.version), [])
        if not rows:
            continue  # the version vanished (cannot happen: versions are immutable)
        choice = choose(device, [variant_of(r) for r in rows], policy_of(rows, policy))
        resolved.choices[name] = choice
        if choice.variant is None:
            resolved.cloud[name] = (target.version, choice.reason)
            continue
        chosen = next(r for r in rows if r.variant == choice.variant)
        envelope = chosen.envelope
        if target.rollback is not None:
            envelope = _rollback_for(target.rollback, chosen.variant) or envelope
        resolved.envelopes[name] = envelope
    return resolved


def _rollback_for(envelope_set: bytes, variant: str) -> bytes | None:
    for envelope in manifest_pb2.EnvelopeSet.FromString(envelope_set).envelopes:
        if manifest_pb2.Manifest.FromString(envelope.payload).variant == variant:
            return envelope.SerializeToString()
    return None


def device_targets(
    catalog: CatalogStore, rollouts: RolloutStore, device_id: str
) -> tuple[dict[str, Target], list[DesiredRow]]:
    """The targets of one device and the rollout rows they came from."""
    rows = rollouts.desired_rows(device_id)
    return targets_for(catalog.deployments(), rows), rows


@dataclass(frozen=True)
class Explained:
    """Which variant of a model version a device gets, and why (None: the cloud)."""

    version: str
    rows: list[ModelRow]
    choice: Choice
    hardware_class: str


def explain(
    catalog: CatalogStore,
    rollouts: RolloutStore,
    device_id: str,
    capabilities: Mapping[str, Any],
    model_name: str,
    *,
    version: str = "",
) -> Explained | None:
    """The variant selection for one model on one device: of ``version``, or of the version
    the device is meant to run (its rollout or the deployment), or the newest. None when the
    model has no versions."""
    if not version:
        targets, _rows = device_targets(catalog, rollouts, device_id)
        target = targets.get(model_name)
        version = target.version if target else catalog.newest_version(model_name) or ""
    if not version:
        return None
    rows = catalog.get_variants(model_name, version)
    profile = DeviceProfile.from_capabilities(capabilities)
    choice = choose(profile, [variant_of(r) for r in rows], policy_of(rows))
    return Explained(version, rows, choice, profile.hardware_class)
