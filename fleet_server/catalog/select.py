"""Variant selection, as a pure function: which variant of a model version a device gets.

Hard constraints first; a variant that breaks one is out, with the reason:
- an Edge TPU variant needs a usable Edge TPU (a device and libedgetpu);
- the runtime must know every operator the variant uses (operator codes only grow);
- the variant and one interpreter's activations must fit in a share of the device's memory;
- the download must fit on the device's disk.

Then preference among what is left: the variants under the accuracy floor (when they carry an
accuracy) are out; if any left variant has a measured latency for the device's hardware class,
the fastest measured one wins; otherwise Edge TPU > full int8 > int16x8 > dynamic int8 >
float16 > float32, then the smaller file. Nothing left means "cloud", with every reason.

A pruned or distilled variant (its ``technique``) whose measured accuracy is within the floor
is preferred over the others that are as fast (within TIE_MARGIN of the fastest measured), or of
the same kind when nothing is measured, and among such variants the smaller download wins: a
pruned variant runs as fast as its dense twin (no sparse kernels on the devices) but travels
smaller. Without a floor, or without a measured accuracy, a technique earns no preference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DEFAULT_POLICY",
    "MEMORY_STEP",
    "PREFERENCE",
    "TIE_MARGIN",
    "Choice",
    "DeviceProfile",
    "Policy",
    "Variant",
    "choose",
    "hardware_class",
]

PREFERENCE = ("edgetpu", "full_int8", "int16x8", "dynamic_int8", "float16", "float32")
# Measured latencies within this share of the fastest are a tie (a build host's medians move by
# a few percent from run to run).
TIE_MARGIN = 0.05
_MB = 1024 * 1024
# Memory and free disk are compared in 64 MiB steps, rounded down: a few bytes more or less
# must not change a device's variant (nor make every check-in miss the server's answer cache).
MEMORY_STEP = 64 << 20
# Edge TPU states that run models: an unflashed USB TPU gets its firmware when loaded; an
# agent older than the state field reports "".
_USABLE_TPU = frozenset({"ready", "unflashed", ""})


class _EdgeTpuLike(Protocol):
    state: str


class CapabilitiesLike(Protocol):
    """The fields of ``device_pb2.Capabilities`` selection reads (the message itself fits)."""

    arch: str
    memory_bytes: int
    disk_free_bytes: int
    edgetpu_count: int
    libedgetpu: bool
    max_builtin_op: int

    @property
    def edgetpus(self) -> Iterable[_EdgeTpuLike]: ...


def _whole(value: Any) -> int:
    """A stored capability number (JSON carries 64-bit ones as strings); 0 when unreadable."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _in_steps(value: int) -> int:
    return value // MEMORY_STEP * MEMORY_STEP or value


@dataclass(frozen=True)
class Variant:
    """What the server knows about one variant of a version."""

    variant: str
    quantization: str
    size: int
    memory_bytes: int  # the file (mapped) plus one interpreter's activations
    max_op_code: int = 0
    latency_ms: Mapping[str, float] = field(default_factory=dict)  # by hardware class
    accuracy: float | None = None
    # An Edge TPU variant's CPU fallback: what runs where there is no Edge TPU.
    fallback: Variant | None = None
    technique: str = ""  # "pruned" | "distilled" | ""
    transport_size: int = 0  # the compressed copy devices download; 0 = the file's size

    @property
    def download(self) -> int:
        return self.transport_size or self.size


@dataclass(frozen=True)
class DeviceProfile:
    """What selection needs from a device's capabilities."""

    arch: str = ""
    memory_bytes: int = 0  # 0 = unknown (not checked)
    disk_free_bytes: int = 0  # 0 = unknown (not checked)
    edgetpu: bool = False  # an Edge TPU device and libedgetpu are both present
    max_op_code: int = 0  # 0 = unknown (not checked)

    @property
    def hardware_class(self) -> str:
        return hardware_class(self.arch, self.edgetpu)

    @classmethod
    def from_capabilities(cls, caps: Mapping[str, Any] | CapabilitiesLike) -> DeviceProfile:
        """The one profile of a device, from its ``Capabilities`` message (check-in) or from
        the JSON stored of it (explain, dashboard, costs, benchmark classes): both give the
        same profile.

        Memory and free disk are rounded down to MEMORY_STEP (values under one step stay as
        they are). An Edge TPU counts when one listed is in a usable state, or, for agents
        that list none, when the count says there is one; and only with libedgetpu.
        """
        if isinstance(caps, Mapping):
            tpus = caps.get("edgetpus") or []
            states = [str(t.get("state", "")) for t in tpus if isinstance(t, Mapping)]
            listed = bool(tpus)
            arch = str(caps.get("arch", "") or "")
            memory = _whole(caps.get("memory_bytes"))
            disk = _whole(caps.get("disk_free_bytes"))
            count = _whole(caps.get("edgetpu_count"))
            library = caps.get("libedgetpu") is True
            max_op = _whole(caps.get("max_builtin_op"))
        else:
            states = [t.state for t in caps.edgetpus]
            listed = bool(states)
            arch, memory, disk = caps.arch, caps.memory_bytes, caps.disk_free_bytes
            count, library, max_op = caps.edgetpu_count, caps.libedgetpu, caps.max_builtin_op
        usable = any(s in _USABLE_TPU for s in states) if listed else count > 0
        return cls(
            arch=arch,
            memory_bytes=_in_steps(memory),
            disk_free_bytes=_in_steps(disk),
            edgetpu=usable and library,
            max_op_code=max_op,
        )


@dataclass(frozen=True)
class Policy:
    """Fleet policy for selection."""

    memory_share: float = 0.5  # a model may use at most this share of the device's memory
    accuracy_floor: float | None = None


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Choice:
    """The outcome: a variant, or None for the cloud; with the reason for every variant."""

    variant: str | None
    reason: str
    verdicts: Mapping[str, str]

    @property
    def cloud(self) -> bool:
        return self.variant is None


def hardware_class(arch: str, edgetpu: bool) -> str:
    """The class measured latencies are kept under, e.g. "aarch64+edgetpu" or "x86_64"."""
    return f"{arch or 'unknown'}{'+edgetpu' if edgetpu else ''}"


def _hard_constraint(device: DeviceProfile, v: Variant, policy: Policy) -> str:
    """Why the variant cannot run on the device, or ""."""
    if v.quantization == "edgetpu" and not device.edgetpu:
        return "needs an Edge TPU and libedgetpu; the device has none usable"
    if device.max_op_code and v.max_op_code > device.max_op_code:
        return (
            f"uses operator code {v.max_op_code}; the device's runtime knows up to "
            f"{device.max_op_code} (update the runtime)"
        )
    if device.memory_bytes:
        budget = int(device.memory_bytes * policy.memory_share)
        if v.memory_bytes > budget:
            total = device.memory_bytes / _MB
            return (
                f"needs {v.memory_bytes / _MB:.0f} MB of memory; the device allows "
                f"{budget / _MB:.0f} MB ({policy.memory_share:.0%} of {total:.0f})"
            )
    if device.disk_free_bytes and v.size > device.disk_free_bytes:
        return (
            f"needs {v.size / _MB:.1f} MB of disk; the device has "
            f"{device.disk_free_bytes / _MB:.1f} MB free"
        )
    return ""


def _optimized(v: Variant, policy: Policy) -> bool:
    """A pruned or distilled variant measured within the accuracy floor."""
    return (
        bool(v.technique)
        and policy.accuracy_floor is not None
        and v.accuracy is not None
        and v.accuracy >= policy.accuracy_floor
    )


def _rank(v: Variant, policy: Policy = DEFAULT_POLICY) -> tuple[int, int, int, str]:
    kind = PREFERENCE.index(v.quantization) if v.quantization in PREFERENCE else len(PREFERENCE)
    if _optimized(v, policy):
        return kind, 0, v.download, v.variant
    return kind, 1, v.size, v.variant


def choose(
    device: DeviceProfile, variants: Sequence[Variant], policy: Policy = DEFAULT_POLICY
) -> Choice:
    """Pick the variant for ``device``; ``Choice.variant`` is None when nothing fits."""
    verdicts: dict[str, str] = {}
    fit: list[Variant] = []
    on_fallback: set[str] = set()
    for v in variants:
        if v.quantization == "edgetpu" and not device.edgetpu and v.fallback is not None:
            on_fallback.add(v.variant)
            # Without an Edge TPU this variant runs its CPU fallback, and downloads both.
            v = Variant(  # noqa: PLW2901
                v.variant,
                v.fallback.quantization,
                v.size + v.fallback.size,
                v.fallback.memory_bytes,
                v.fallback.max_op_code,
                v.fallback.latency_ms,
                v.fallback.accuracy,
                technique=v.fallback.technique,
                transport_size=v.download + v.fallback.download,
            )
        why = _hard_constraint(device, v, policy)
        if why:
            verdicts[v.variant] = why
        elif (
            policy.accuracy_floor is not None
            and v.accuracy is not None
            and v.accuracy < policy.accuracy_floor
        ):
            verdicts[v.variant] = (
                f"accuracy {v.accuracy:.3f} is under the floor {policy.accuracy_floor:.3f}"
            )
        else:
            fit.append(v)
    if not fit:
        reason = "no variant fits this device" + (
            ": " + "; ".join(f"{k}: {why}" for k, why in verdicts.items()) if verdicts else ""
        )
        return Choice(None, reason, verdicts)
    klass = device.hardware_class
    measured = [v for v in fit if klass in v.latency_ms]
    if measured:
        fastest = min(measured, key=lambda v: (v.latency_ms[klass], _rank(v)))
        limit = fastest.latency_ms[klass] * (1 + TIE_MARGIN)
        preferred = [v for v in measured if v.latency_ms[klass] <= limit and _optimized(v, policy)]
        best = fastest
        reason = f"fastest measured on {klass}: {best.latency_ms[klass]:.4f} ms"
        if preferred:
            best = min(preferred, key=lambda v: (v.download, v.latency_ms[klass], v.variant))
            reason = (
                f"{best.technique}, accuracy {best.accuracy or 0:.3f} within the floor "
                f"{policy.accuracy_floor or 0:.3f}, as fast as the fastest measured on {klass} "
                f"({best.latency_ms[klass]:.4f} ms, within {TIE_MARGIN:.0%}), and "
                f"{best.download} bytes to download"
            )
        for v in fit:
            if v is best:
                continue
            if v not in measured:
                verdicts[v.variant] = f"not measured on {klass}, and another variant is"
            elif v.latency_ms[klass] > limit or best is fastest:
                verdicts[v.variant] = f"slower on {klass}: {v.latency_ms[klass]:.2f} ms"
            else:
                verdicts[v.variant] = (
                    f"as fast on {klass} ({v.latency_ms[klass]:.4f} ms), but the {best.technique} "
                    f"variant {best.variant} within the accuracy floor is preferred"
                    + (f" ({best.download} <= {v.download} bytes)" if v in preferred else "")
                )
    else:
        best = min(fit, key=lambda v: _rank(v, policy))
        reason = f"{best.quantization} is the most preferred kind that fits (no measurements)"
        if _optimized(best, policy):
            reason += f"; {best.technique}, within the accuracy floor"
        for v in fit:
            if v is best:
                continue
            verdicts[v.variant] = (
                f"{v.quantization} is preferred less than {best.quantization}"
                if _rank(v, policy)[0] != _rank(best, policy)[0]
                else f"same kind ({v.quantization}) as {best.variant}, a {best.technique} "
                "variant within the accuracy floor"
                if _optimized(best, policy) and not _optimized(v, policy)
                else f"same kind ({v.quantization}) as {best.variant}, which is smaller or "
                f"sorts first ({_rank(best, policy)[2]} <= {_rank(v, policy)[2]} bytes)"
            )
    verdicts[best.variant] = reason
    for name in on_fallback:
        verdicts[name] = f"no Edge TPU here, so it would run its CPU fallback; {verdicts[name]}"
    return Choice(best.variant, verdicts[best.variant], verdicts)
