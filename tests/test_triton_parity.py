"""tritonclient (its own environment, .venv-triton) against the agent's OIP API in a process of
its own: the calls Triton users rely on beyond inference (issue 20)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO, start, wait_for

pytestmark = pytest.mark.slow

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(url=f"unix:{sys.argv[1]}")
inputs = []
for name, values in (("a", [[1, 2, 3, 4]]), ("b", [[0, 0, 0, 0]])):
    tensor = grpcclient.InferInput(name, [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array(values, np.float32))
    inputs.append(tensor)
client.infer("pair", inputs)
top = client.infer("pair", inputs, outputs=[grpcclient.InferRequestedOutput("sum", class_count=2)])
print(json.dumps({
    "classes": [[c.decode() for c in row] for row in top.as_numpy("sum")],
    "metadata": client.get_server_metadata(as_json=True),
    "config": client.get_model_config("pair", as_json=True),
    "stats": client.get_inference_statistics("pair", as_json=True),
}))
"""


def test_tritonclient_reads_the_model_configuration_and_statistics(
    tmp_path: Path, color_models: Path
) -> None:
    shutil.copyfile(color_models / "pair_float.tflite", tmp_path / "pair.tflite")
    socket = tmp_path / "oip.sock"
    cmd = [sys.executable, "-m", "tests.tools.oip_serve", str(socket),
           f"pair={tmp_path / 'pair.tflite'}"]  # fmt: skip
    api = start(cmd, tmp_path / "api.log", cwd=REPO)
    try:
        wait_for("the API", lambda: "ready" in api.output() or api.popen.poll() is not None, 60)
        assert re.search(r"ready \d+", api.output()), api.output()
        python = os.environ.get("EDGEFLEET_TRITON_PYTHON") or str(REPO / ".venv-triton/bin/python")
        result = subprocess.run([python, "-c", CLIENT, str(socket)], capture_output=True,
                                text=True, timeout=120, check=False)  # fmt: skip
    finally:
        api.stop()
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert {"model_configuration", "statistics"} <= set(answer["metadata"]["extensions"])
    config = answer["config"]["config"]
    assert config["platform"] == "tensorflow_lite" and config["backend"] == "cpu"
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("a", "TYPE_FP32", ["1", "4"]), ("b", "TYPE_FP32", ["1", "4"])]  # fmt: skip
    stats = answer["stats"]["model_stats"][0]
    assert stats["name"] == "pair" and stats["inference_count"] == "2"
    assert int(stats["inference_stats"]["success"]["count"]) == 2
    # The classification extension: the top 2 of sum = [1, 2, 3, 4] as "value:index".
    assert answer["classes"] == [["4:3", "3:2"]]
    assert "classification" in answer["metadata"]["extensions"]
