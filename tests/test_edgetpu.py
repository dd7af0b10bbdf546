"""Edge TPU paths: probe, backend choice, delegate loading, CPU fallback.

No Edge TPU exists here. The delegate paths run against a FAKE libedgetpu compiled by the tests
(tests/fakes/fake_edgetpu.c): it speaks the delegate plugin ABI and edgetpu_version() but runs
nothing, so the real Edge TPU-compiled models from tests/data load on it and then fail on their
edgetpu-custom-op, exactly as they would with a library that is not libedgetpu.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import DelegateError, UnsupportedModelError
from agent.hardware.probe import probe, to_capabilities
from agent.inference.backends import choose_backend, load_edgetpu_delegate
from agent.inference.engine import Engine, EngineOptions
from agent.inference.modelfile import inspect_model_file
from agent.inference.preprocess import image_to_tensor, load_image
from agent.inference.runtime import find_runtime
from tests.conftest import FakeEdgeTpu
from tests.harness import DATA, run_cli

CPU_MODEL = DATA / "mobilenet_v1_0.25_128_quant.tflite"
TPU_MODEL = DATA / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
TPU_INFO = inspect_model_file(TPU_MODEL)
CPU_INFO = inspect_model_file(CPU_MODEL)


def test_edgetpu_model_without_a_tpu_is_refused_before_loading() -> None:
    with pytest.raises(UnsupportedModelError, match="no Edge TPU; deploy the CPU variant"):
        choose_backend(TPU_INFO, [], {})


def test_edgetpu_models_spread_over_the_least_loaded_tpu() -> None:
    tpus = ["usb:0", "usb:1", "pci:0"]
    choice = choose_backend(TPU_INFO, tpus, {"usb:0": 2, "usb:1": 1, "pci:0": 1})
    assert (choice.backend, choice.device) == ("edgetpu", "pci:0")
    assert "serves 1 other model" in choice.reason
    assert choose_backend(TPU_INFO, tpus, {}).device == "pci:0"  # ties: by name


def test_cpu_models_run_on_xnnpack_even_when_the_tpu_is_preferred() -> None:
    assert choose_backend(CPU_INFO, ["usb:0"], {}).backend == "cpu"
    choice = choose_backend(CPU_INFO, ["usb:0"], {}, prefer="edgetpu")
    assert choice.backend == "cpu" and "not compiled for the Edge TPU" in choice.reason
    with pytest.raises(UnsupportedModelError, match="CPU backend was requested"):
        choose_backend(TPU_INFO, ["usb:0"], {}, prefer="cpu")


@pytest.mark.slow
def test_delegate_load_failures_are_named(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = find_runtime().load_delegate
    with pytest.raises(DelegateError, match=r"cannot load .*nothere\.so"):
        load_edgetpu_delegate(load, str(tmp_path / "nothere.so"), "usb:0")
    with pytest.raises(DelegateError, match="not a TFLite delegate plugin"):
        load_edgetpu_delegate(load, str(fake_edgetpu.not_a_delegate), "usb:0")
    record = tmp_path / "record.txt"
    monkeypatch.setenv("FAKE_EDGETPU_RECORD", str(record))
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", "usb:0")
    with pytest.raises(DelegateError, match="Edge TPU usb:1 is not available"):
        load_edgetpu_delegate(load, str(fake_edgetpu.library), "usb:1")
    assert load_edgetpu_delegate(load, str(fake_edgetpu.library), "usb:0") is not None
    calls = [line for line in record.read_text().splitlines() if not line.startswith("destroy")]
    assert calls == ["refused device=usb:1", "create device=usb:0"]


@pytest.mark.slow
def test_a_delegate_that_does_not_take_the_edgetpu_op_falls_back_to_the_cpu_variant(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.txt"
    monkeypatch.setenv("FAKE_EDGETPU_RECORD", str(record))
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", "usb:0")
    engine = Engine(EngineOptions(edgetpus=("usb:0",), edgetpu_library=str(fake_edgetpu.library)))
    with pytest.raises(DelegateError, match="did not take the model's edgetpu-custom-op"):
        engine.load("mobilenet", "1.0.0", TPU_MODEL)
    model = engine.load("mobilenet", "1.0.0", TPU_MODEL, cpu_fallback=CPU_MODEL)
    assert (model.backend, model.device) == ("cpu", "")
    assert model.backend_reason.startswith("fell back to the CPU variant: the delegate")
    assert "create device=usb:0" in record.read_text()  # the TPU path really was tried
    cat = image_to_tensor(load_image(DATA / "cat.bmp"), CPU_INFO.inputs[0])
    scores = model.infer([cat])[0]
    assert 281 <= int(np.argmax(scores)) <= 287  # a cat, from the CPU variant


def test_no_tpu_with_a_cpu_variant_serves_the_cpu_variant() -> None:
    engine = Engine(EngineOptions())
    model = engine.load("mobilenet", "1.0.0", TPU_MODEL, cpu_fallback=CPU_MODEL)
    assert model.backend == "cpu" and "has no Edge TPU" in model.backend_reason


def fake_hardware(root: Path) -> tuple[Path, Path]:
    sysfs, devfs = root / "sys", root / "dev"
    for name, (vendor, product) in {
        "1-1": ("1a6e", "089a"),
        "2-1": ("18d1", "9302"),
        "3-1": ("8087", "0024"),
    }.items():
        device = sysfs / "bus" / "usb" / "devices" / name
        device.mkdir(parents=True)
        (device / "idVendor").write_text(vendor + "\n")
        (device / "idProduct").write_text(product + "\n")
    devfs.mkdir()
    (devfs / "apex_0").write_text("")
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("45500\n")
    (zone / "type").write_text("cpu-thermal\n")
    apex = sysfs / "class" / "apex" / "apex_0"
    apex.mkdir(parents=True)
    (apex / "temp").write_text("51250\n")
    return sysfs, devfs


@pytest.mark.slow
def test_probe_finds_coral_usb_and_pcie_devices_libedgetpu_and_temperatures(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path
) -> None:
    sysfs, devfs = fake_hardware(tmp_path)
    info = probe(tmp_path, sysfs=sysfs, devfs=devfs, edgetpu_library=str(fake_edgetpu.library))
    assert [(t.device, t.state) for t in info.edgetpus] == [
        ("usb:0", "unflashed"),
        ("usb:1", "ready"),
        ("pci:0", "ready"),
    ]
    assert info.libedgetpu == str(fake_edgetpu.library)
    assert info.libedgetpu_version == "FAKE libedgetpu (EdgeFleet test double)"
    assert info.temperatures_c == {"cpu-thermal": 45.5, "edgetpu-apex_0": 51.25}
    caps = to_capabilities(info)
    assert caps.edgetpu_count == 3 and caps.libedgetpu
    assert caps.runtime == "ai-edge-litert" and caps.cpu_cores >= 1


def test_probe_on_a_plain_machine_reports_nothing_it_does_not_see(tmp_path: Path) -> None:
    info = probe(
        tmp_path,
        sysfs=tmp_path / "none",
        devfs=tmp_path / "none",
        edgetpu_library=str(tmp_path / "missing.so"),
    )
    assert info.edgetpus == () and info.libedgetpu == "" and info.temperatures_c == {}


def write_config(tmp_path: Path, fake: FakeEdgeTpu) -> Path:
    sysfs, devfs = fake_hardware(tmp_path)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path}"\n'
        f'[hardware]\nedgetpu_library = "{fake.library}"\n'
        f'sysfs_root = "{sysfs}"\ndev_root = "{devfs}"\n'
    )
    return config


@pytest.mark.slow
def test_probe_cli_reports_what_the_agent_would_see(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path
) -> None:
    config = write_config(tmp_path, fake_edgetpu)
    result = run_cli("edgefleet-agent", "probe", "--json", "--config", str(config))
    data = json.loads(result.stdout)
    assert [t["device"] for t in data["edgetpus"]] == ["usb:0", "usb:1", "pci:0"]
    assert data["libedgetpu_version"].startswith("FAKE")
    human = run_cli("edgefleet-agent", "probe", "--config", str(config)).stdout
    assert "usb:0 (unflashed" in human and "cpu-thermal 45.5 C" in human


@pytest.mark.slow
def test_predict_on_an_edgetpu_model_with_a_wrong_library_is_one_clear_line(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", "usb:0,usb:1,pci:0")
    config = write_config(tmp_path, fake_edgetpu)
    result = run_cli(
        "edgefleet-agent",
        "predict",
        str(TPU_MODEL),
        str(DATA / "cat.bmp"),
        "--config",
        str(config),
        check=False,
    )
    assert result.returncode == 1
    assert "did not take the model's edgetpu-custom-op" in result.stderr
    assert "Traceback" not in result.stderr
    cpu = run_cli(
        "edgefleet-agent",
        "predict",
        str(CPU_MODEL),
        str(DATA / "cat.bmp"),
        "--json",
        "--backend",
        "edgetpu",
        "--config",
        str(config),
    )
    assert json.loads(cpu.stdout)["backend"] == "cpu"


@pytest.mark.slow
def test_bench_cli_reports_latency_and_throughput(color_models: Path) -> None:
    result = run_cli(
        "edgefleet-agent",
        "bench",
        str(color_models / "color_float.tflite"),
        "--seconds",
        "0.3",
        "--concurrency",
        "2",
        "--json",
    )
    data = json.loads(result.stdout)
    assert data["requests"] > 10 and data["throughput_per_s"] > 0
    assert 0 < data["p50_ms"] <= data["p95_ms"] <= data["p99_ms"]
    assert data["backend"] == "cpu" and data["concurrency"] == 2 and data["cpu_cores"] >= 1
