"""The contract: committed stubs match the .proto files, and the wire helpers are right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protos import inference_pb2
from protos.envelope import pae
from protos.topics import device_from_topic, telemetry_filter, telemetry_topic, validate_segment
from tests.harness import REPO


@pytest.mark.slow
def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
    )
    generated = sorted(p.name for p in (tmp_path / "protos").iterdir())
    committed = sorted(
        p.name
        for p in (REPO / "protos").iterdir()
        if p.name.endswith((".pyi", "_pb2.py", "_pb2_grpc.py"))
    )
    assert generated == committed, "run scripts/gen_protos.py and commit the result"
    stale = [
        name
        for name in generated
        if (tmp_path / "protos" / name).read_bytes() != (REPO / "protos" / name).read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run scripts/gen_protos.py and commit the result"


def test_inference_service_uses_the_spec_names_standard_clients_call() -> None:
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    request = inference_pb2.ModelInferRequest.DESCRIPTOR
    assert request.fields_by_name["raw_input_contents"].number == 7
    assert (
        inference_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number
        == 6
    )


def test_pae_matches_the_dsse_specification_example() -> None:
    # The worked example of the DSSE v1 protocol document.
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_binds_the_payload_type() -> None:
    assert pae("a", b"b c") != pae("a b", b"c")


def test_topics_round_trip_and_refuse_wildcards() -> None:
    topic = telemetry_topic("fleet-1", "dev-a")
    assert topic == "edgefleet/v1/fleet-1/dev-a/telemetry"
    assert device_from_topic(topic) == ("fleet-1", "dev-a", "telemetry")
    assert telemetry_filter("f") == "edgefleet/v1/f/+/telemetry"
    assert telemetry_filter("f", "g") == "$share/g/edgefleet/v1/f/+/telemetry"
    for bad in ("a/b", "+", "#", "", "x" * 65, "dev a"):
        try:
            validate_segment(bad, "device id")
        except ValueError as exc:
            assert "device id" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted as a topic level")
    assert device_from_topic("edgefleet/v1/f/+/telemetry") is None
    assert device_from_topic("other/v1/f/d/telemetry") is None
