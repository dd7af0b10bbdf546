"""Variant selection as pure code: hard constraints, then measured latency, then kind."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.catalog.select import (
    MEMORY_STEP,
    PREFERENCE,
    DeviceProfile,
    Policy,
    Variant,
    choose,
)
from protos import device_pb2

MB = 1024 * 1024
TPU = Variant("edgetpu", "edgetpu", 4 * MB, 6 * MB, max_op_code=0)
INT8 = Variant("int8", "full_int8", 4 * MB, 6 * MB, max_op_code=25)
FLOAT = Variant("float32", "float32", 16 * MB, 20 * MB, max_op_code=25)
PI = DeviceProfile(arch="aarch64", memory_bytes=1024 * MB, disk_free_bytes=8000 * MB)
CORAL = DeviceProfile(
    arch="aarch64", memory_bytes=1024 * MB, disk_free_bytes=8000 * MB, edgetpu=True
)


def test_edge_tpu_wins_where_there_is_one_and_int8_elsewhere() -> None:
    on_coral = choose(CORAL, [FLOAT, INT8, TPU])
    assert on_coral.variant == "edgetpu"
    assert "most preferred kind" in on_coral.reason
    assert on_coral.verdicts["int8"] == "full_int8 is preferred less than edgetpu"

    on_pi = choose(PI, [FLOAT, INT8, TPU])
    assert on_pi.variant == "int8"
    assert on_pi.verdicts["edgetpu"].startswith("needs an Edge TPU and libedgetpu")


def test_an_edge_tpu_variant_with_a_cpu_fallback_runs_its_fallback_without_a_tpu() -> None:
    bundled = Variant("edgetpu", "edgetpu", 4 * MB, 6 * MB, fallback=INT8)
    assert choose(PI, [bundled]).variant == "edgetpu"
    # A standalone CPU variant of the same kind wins: one download instead of two.
    choice = choose(PI, [bundled, INT8])
    assert choice.variant == "int8"
    assert "which is smaller" in choice.verdicts["edgetpu"]
    assert choose(CORAL, [bundled, INT8]).variant == "edgetpu"


def test_nothing_fits_means_the_cloud_with_every_reason() -> None:
    tiny = DeviceProfile(arch="armv7l", memory_bytes=8 * MB, disk_free_bytes=8000 * MB)
    choice = choose(tiny, [FLOAT, INT8, TPU])
    assert choice.cloud and choice.variant is None
    assert "no variant fits" in choice.reason
    assert choice.verdicts["float32"] == "needs 20 MB of memory; the device allows 4 MB (50% of 8)"
    assert set(choice.verdicts) == {"float32", "int8", "edgetpu"}


def test_an_old_runtime_and_a_full_disk_rule_variants_out() -> None:
    old = DeviceProfile(arch="x86_64", memory_bytes=4096 * MB, max_op_code=20)
    assert "runtime knows up to 20" in choose(old, [INT8]).reason
    full = DeviceProfile(arch="x86_64", memory_bytes=4096 * MB, disk_free_bytes=10 * MB)
    choice = choose(full, [FLOAT, INT8])
    assert choice.variant == "int8"
    assert choice.verdicts["float32"] == "needs 16.0 MB of disk; the device has 10.0 MB free"


def test_measured_latency_beats_the_kind_order() -> None:
    fast_float = Variant("float32", "float32", 16 * MB, 20 * MB, latency_ms={"aarch64": 3.0})
    slow_int8 = Variant("int8", "full_int8", 4 * MB, 6 * MB, latency_ms={"aarch64": 9.0})
    choice = choose(PI, [slow_int8, fast_float])
    assert choice.variant == "float32"
    assert choice.reason == "fastest measured on aarch64: 3.0000 ms"
    assert choice.verdicts["int8"] == "slower on aarch64: 9.00 ms"
    # Measurements of another hardware class do not count here.
    other = Variant("float32", "float32", 16 * MB, 20 * MB, latency_ms={"x86_64": 1.0})
    assert choose(PI, [INT8, other]).variant == "int8"


def test_the_accuracy_floor_rules_out_variants_that_carry_a_low_accuracy() -> None:
    lossy = Variant("int8", "full_int8", 4 * MB, 6 * MB, accuracy=0.61)
    exact = Variant("float32", "float32", 16 * MB, 20 * MB, accuracy=0.70)
    choice = choose(PI, [lossy, exact], Policy(accuracy_floor=0.65))
    assert choice.variant == "float32"
    assert choice.verdicts["int8"] == "accuracy 0.610 is under the floor 0.650"


def test_capabilities_become_a_profile() -> None:
    caps = {
        "arch": "aarch64",
        "memory_bytes": "4294967296",  # proto JSON renders uint64 as strings
        "edgetpus": [{"device": "usb:0", "state": "unflashed"}],
        "libedgetpu": True,
        "max_builtin_op": 209,
    }
    profile = DeviceProfile.from_capabilities(caps)
    assert profile.edgetpu and profile.memory_bytes == 4 << 30 and profile.max_op_code == 209
    assert profile.hardware_class == "aarch64+edgetpu"
    assert not DeviceProfile.from_capabilities({**caps, "libedgetpu": False}).edgetpu
    assert DeviceProfile.from_capabilities({}).hardware_class == "unknown"
    # Garbage in a stored document reads as unknown, not as an exception in a dashboard page.
    odd = DeviceProfile.from_capabilities({"memory_bytes": "lots", "edgetpus": ["usb"]})
    assert odd.memory_bytes == 0 and not odd.edgetpu


def _stored(caps: device_pb2.Capabilities) -> dict[str, object]:
    """What the server keeps of reported capabilities (enrollment and check-in write this)."""
    return json.loads(
        json.dumps(MessageToDict(caps, preserving_proto_field_name=True), sort_keys=True)
    )


def test_memory_is_counted_in_steps_wherever_the_profile_is_made() -> None:
    # Regression: check-in rounded 1000 MiB down to 960 (480 MiB allowed), explain did not
    # (500 MiB allowed), so a 490 MiB variant went to the cloud while explain said it fit.
    caps = device_pb2.Capabilities(arch="aarch64", memory_bytes=1000 * MB)
    big = Variant("float32", "float32", 10 * MB, 490 * MB)
    at_check_in = choose(DeviceProfile.from_capabilities(caps), [big])
    in_explain = choose(DeviceProfile.from_capabilities(_stored(caps)), [big])
    assert at_check_in == in_explain
    assert at_check_in.variant is None
    assert "allows 480 MB (50% of 960)" in in_explain.verdicts["float32"]


def test_an_edge_tpu_in_error_is_no_edge_tpu_wherever_the_profile_is_made() -> None:
    # Regression: explain counted edgetpu_count and offered the Edge TPU variant to a device
    # whose only TPU reported "error"; check-in gave it int8.
    caps = device_pb2.Capabilities(
        arch="aarch64",
        memory_bytes=4 << 30,
        edgetpu_count=1,
        edgetpus=[device_pb2.EdgeTpu(device="usb:0", kind="usb", state="error")],
        libedgetpu=True,
    )
    for profile in (
        DeviceProfile.from_capabilities(caps),
        DeviceProfile.from_capabilities(_stored(caps)),
    ):
        assert not profile.edgetpu
        assert choose(profile, [TPU, INT8]).variant == "int8"
    # An agent too old to list its TPUs: the count decides.
    old = device_pb2.Capabilities(arch="aarch64", edgetpu_count=1, libedgetpu=True)
    assert DeviceProfile.from_capabilities(old).edgetpu
    assert DeviceProfile.from_capabilities(_stored(old)).edgetpu


_TPU_STATES = st.sampled_from(["ready", "unflashed", "", "error", "busy", "READY"])
_CAPABILITIES = st.builds(
    device_pb2.Capabilities,
    arch=st.sampled_from(["", "x86_64", "aarch64", "armv7l"]),
    memory_bytes=st.one_of(
        st.integers(0, (1 << 64) - 1), st.integers(0, 4).map(lambda k: k * MEMORY_STEP)
    ),
    disk_free_bytes=st.integers(0, (1 << 64) - 1),
    edgetpu_count=st.integers(0, 4),
    edgetpus=st.lists(
        st.builds(device_pb2.EdgeTpu, device=st.just("usb:0"), state=_TPU_STATES), max_size=3
    ),
    libedgetpu=st.booleans(),
    max_builtin_op=st.integers(0, (1 << 32) - 1),
)


@given(_CAPABILITIES, st.integers(1, 2 << 30))
def test_check_in_and_every_other_reader_see_the_same_profile(
    caps: device_pb2.Capabilities, need: int
) -> None:
    live = DeviceProfile.from_capabilities(caps)
    stored = DeviceProfile.from_capabilities(_stored(caps))
    assert live == stored
    # And so the same choice, whatever the variant needs.
    variants = [TPU, INT8, Variant("big", "float32", need, need)]
    assert choose(live, variants) == choose(stored, variants)
    assert live.memory_bytes <= caps.memory_bytes
    assert caps.memory_bytes - live.memory_bytes < MEMORY_STEP


KINDS = st.sampled_from(PREFERENCE)


@given(
    st.lists(
        st.tuples(KINDS, st.integers(1, 64), st.integers(1, 64), st.integers(0, 200)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 256),
    st.booleans(),
    st.integers(0, 200),
)
def test_the_choice_always_fits_and_is_never_beaten_by_a_fitting_kind(
    specs: list[tuple[str, int, int, int]], memory_mb: int, tpu: bool, max_op: int
) -> None:
    variants = [
        Variant(f"v{i}", kind, size * MB, (size + extra) * MB, max_op_code=op)
        for i, (kind, size, extra, op) in enumerate(specs)
    ]
    device = DeviceProfile(
        arch="x86_64", memory_bytes=memory_mb * MB, edgetpu=tpu, max_op_code=max_op
    )
    choice = choose(device, variants)
    assert set(choice.verdicts) == {v.variant for v in variants}
    fitting = [
        v
        for v in variants
        if (v.quantization != "edgetpu" or tpu)
        and (not max_op or v.max_op_code <= max_op)
        and (not memory_mb or v.memory_bytes <= memory_mb * MB // 2)
    ]
    if not fitting:
        assert choice.cloud
        return
    chosen = next(v for v in variants if v.variant == choice.variant)
    assert chosen in fitting
    best_kind = min(PREFERENCE.index(v.quantization) for v in fitting)
    assert PREFERENCE.index(chosen.quantization) == best_kind


def test_reported_capabilities_are_kept_within_bounds() -> None:
    from fleet_server.registry.capabilities import MAX_EDGETPUS, MAX_TEMPERATURES, bounded

    real = device_pb2.Capabilities(
        arch="aarch64",
        memory_bytes=4 << 30,
        edgetpus=[device_pb2.EdgeTpu(device="usb:0", kind="usb", state="ready")],
        temperatures_c={"soc": 51.0},
        libedgetpu=True,
    )
    assert bounded(real) is real  # a real device's message is kept as it is
    lie = device_pb2.Capabilities(arch="x" * 10_000 + "\x00", libedgetpu=True)
    for i in range(50_000):
        lie.edgetpus.add(device=f"usb:{i}", kind="usb", path="/dev/bus/usb/" * 20, state="ready")
    for i in range(5_000):
        lie.temperatures_c[f"zone{i}"] = 40.0
    kept = bounded(lie)
    assert len(kept.edgetpus) == MAX_EDGETPUS and len(kept.temperatures_c) == MAX_TEMPERATURES
    assert len(kept.arch) <= 128 and "\x00" not in kept.arch
    assert kept.ByteSize() < 16 << 10
    # What selection makes of it does not change for the cut: a usable TPU stays usable.
    assert DeviceProfile.from_capabilities(kept).edgetpu
