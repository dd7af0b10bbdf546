"""Selection and the optimization technique (issue 24 item 5): a pruned or distilled variant
measured within the version's accuracy floor is preferred over variants as fast as the fastest
(within TIE_MARGIN), the smaller download first; without a floor or a measured accuracy it earns
nothing, and it never beats a clearly faster variant or a more preferred kind."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet_server.catalog.select import TIE_MARGIN, DeviceProfile, Policy, Variant, choose

MB = 1024 * 1024
HOST = DeviceProfile(arch="x86_64", memory_bytes=4096 * MB, disk_free_bytes=8000 * MB)
FLOOR = Policy(accuracy_floor=0.95)


def variant(
    name: str,
    ms: float,
    *,
    kind: str = "full_int8",
    accuracy: float | None = 0.96,
    technique: str = "",
    transport: int = 0,
) -> Variant:
    return Variant(
        name, kind, 4 * MB, 6 * MB, latency_ms={"x86_64": ms}, accuracy=accuracy,
        technique=technique, transport_size=transport,
    )  # fmt: skip


DENSE = variant("int8", 1.00, transport=3 * MB)
PRUNED = variant("pruned50-int8", 1.03, technique="pruned", transport=2 * MB)


def test_a_pruned_variant_as_fast_and_within_the_floor_wins_on_its_smaller_download() -> None:
    choice = choose(HOST, [DENSE, PRUNED], FLOOR)
    assert choice.variant == "pruned50-int8"
    assert "pruned, accuracy 0.960 within the floor 0.950" in choice.reason
    assert f"within {TIE_MARGIN:.0%}" in choice.reason and "2097152 bytes" in choice.reason
    assert "as fast on x86_64 (1.0000 ms)" in choice.verdicts["int8"]


def test_without_a_floor_the_fastest_wins_as_before() -> None:
    choice = choose(HOST, [DENSE, PRUNED])
    assert choice.variant == "int8" and choice.reason.startswith("fastest measured")
    assert choice.verdicts["pruned50-int8"] == "slower on x86_64: 1.03 ms"


def test_no_preference_under_the_floor_without_an_accuracy_or_when_clearly_slower() -> None:
    low = variant("pruned50-int8", 1.0, technique="pruned", accuracy=0.90, transport=MB)
    choice = choose(HOST, [DENSE, low], FLOOR)
    assert choice.variant == "int8"
    assert "under the floor" in choice.verdicts["pruned50-int8"]
    unknown = variant("pruned50-int8", 1.0, technique="pruned", accuracy=None, transport=MB)
    assert choose(HOST, [DENSE, unknown], FLOOR).variant == "int8"
    slow = variant("distilled-int8", 1.0 + 2 * TIE_MARGIN, technique="distilled", transport=MB)
    assert choose(HOST, [DENSE, slow], FLOOR).variant == "int8"


def test_among_optimized_variants_the_smaller_download_then_the_faster_wins() -> None:
    a = variant("pruned50-int8", 1.0, technique="pruned", transport=2 * MB)
    b = variant("pruned75-int8", 1.02, technique="pruned", transport=MB)
    c = variant("distilled-int8", 1.01, technique="distilled", transport=MB)
    choice = choose(HOST, [a, b, c, DENSE], FLOOR)
    assert choice.variant == "distilled-int8"
    assert "1048576 <= 1048576 bytes" in choice.verdicts["pruned75-int8"]


def test_unmeasured_the_kind_order_still_rules_and_breaks_ties_for_the_technique() -> None:
    dense = Variant("int8", "full_int8", 4 * MB, 6 * MB, accuracy=0.96)
    pruned = Variant(
        "pruned50-int8", "full_int8", 4 * MB, 6 * MB, accuracy=0.96, technique="pruned",
        transport_size=MB,
    )  # fmt: skip
    pruned_float = Variant(
        "pruned50-float32", "float32", 16 * MB, 20 * MB, accuracy=0.97, technique="pruned",
        transport_size=MB,
    )  # fmt: skip
    choice = choose(HOST, [pruned_float, dense, pruned], FLOOR)
    assert choice.variant == "pruned50-int8"
    assert choice.reason.endswith("pruned, within the accuracy floor")
    assert "a pruned variant within the accuracy floor" in choice.verdicts["int8"]
    assert choice.verdicts["pruned50-float32"] == "float32 is preferred less than full_int8"
    assert choose(HOST, [dense, pruned]).variant == "int8"  # no floor: the file size, then name


@given(
    st.lists(
        st.tuples(
            st.floats(0.01, 100), st.sampled_from(["", "pruned", "distilled"]),
            st.one_of(st.none(), st.floats(0, 1)), st.integers(1, 10 * MB),
        ),
        min_size=1, max_size=8,
    ),
    st.one_of(st.none(), st.floats(0, 1)),
)  # fmt: skip
def test_the_choice_is_within_the_tie_of_the_fastest_and_never_under_the_floor(
    specs: list[tuple[float, str, float | None, int]], floor: float | None
) -> None:
    variants = [
        variant(f"v{i}", ms, technique=t, accuracy=acc, transport=size)
        for i, (ms, t, acc, size) in enumerate(specs)
    ]
    policy = Policy(accuracy_floor=floor)
    choice = choose(HOST, variants, policy)
    allowed = [v for v in variants if floor is None or v.accuracy is None or v.accuracy >= floor]
    if not allowed:
        assert choice.cloud
        return
    chosen = next(v for v in variants if v.variant == choice.variant)
    fastest = min(v.latency_ms["x86_64"] for v in allowed)
    assert chosen in allowed
    assert chosen.latency_ms["x86_64"] <= fastest * (1 + TIE_MARGIN)
    if chosen.latency_ms["x86_64"] > fastest:  # only a technique within the floor earns it
        assert chosen.technique and floor is not None and chosen.accuracy is not None


def test_the_versions_floor_and_a_callers_floor_the_stricter_wins() -> None:
    import json

    from fleet_server.catalog.store import ModelRow
    from fleet_server.rollouts.desired import policy_of

    def row(requirements: dict[str, object]) -> ModelRow:
        return ModelRow("m", "1.0.0", "int8", 1, "0" * 64, 1, False, b"", 0,
                        requirements=json.dumps(requirements))  # fmt: skip

    assert policy_of([row({})]).accuracy_floor is None
    assert policy_of([row({"accuracy_floor": 0.9})]).accuracy_floor == 0.9
    assert (
        policy_of([row({"accuracy_floor": 0.9})], Policy(accuracy_floor=0.95)).accuracy_floor
        == 0.95
    )
    assert (
        policy_of([row({"accuracy_floor": 0.97})], Policy(accuracy_floor=0.95)).accuracy_floor
        == 0.97
    )
    assert policy_of([row({"accuracy_floor": "x"})]).accuracy_floor is None  # not a number
