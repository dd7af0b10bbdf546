"""Classify a preprocessed tensor through an OIP v2 server with tritonclient.

Runs in its own environment (.venv-triton), as an app on a device would:

    python oip_client.py URL MODEL INPUT.npy [--repository | --shm [--group-shared]]

Prints JSON: the server metadata, the model's input/output names and the top-1 index and score.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def repository(client: grpcclient.InferenceServerClient, model: str) -> dict:
    """Exercise the model repository extension: index, unload, load."""
    before = client.get_model_repository_index(as_json=True)["models"]
    client.unload_model(model)
    ready_after_unload = client.is_model_ready(model)
    index_after_unload = client.get_model_repository_index(as_json=True)["models"]
    client.load_model(model)
    return {
        "before": before,
        "ready_after_unload": ready_after_unload,
        "after_unload": index_after_unload,
        "ready_after_load": client.is_model_ready(model),
    }


def shared_memory(
    client: grpcclient.InferenceServerClient, model: str, path: str, group_shared: bool = False
) -> dict:
    """Infer once inline and once through system shared memory; compare and time both.

    ``group_shared``: give the objects mode 0660 (tritonclient creates them 0600), as an app
    that is not the agent's own user does so that the agent may open them; the app's primary
    group is the API socket's group here."""
    import time
    from pathlib import Path

    import tritonclient.utils.shared_memory as shm

    meta = client.get_model_metadata(model, as_json=True)
    data = np.load(path)
    tensor, output = meta["inputs"][0], meta["outputs"][0]
    out_bytes = int(np.prod([int(d) for d in output["shape"]])) * 4  # FP32 scores
    in_handle = shm.create_shared_memory_region("frame_in", "/edgefleet_test_in", data.nbytes)
    out_handle = shm.create_shared_memory_region("scores_out", "/edgefleet_test_out", out_bytes)
    try:
        if group_shared:
            for key in ("/edgefleet_test_in", "/edgefleet_test_out"):
                Path("/dev/shm" + key).chmod(0o660)  # noqa: S108 - where POSIX shm lives
        shm.set_shared_memory_region(in_handle, [data])
        client.unregister_system_shared_memory()
        client.register_system_shared_memory("frame_in", "/edgefleet_test_in", data.nbytes)
        client.register_system_shared_memory("scores_out", "/edgefleet_test_out", out_bytes)
        status = client.get_system_shared_memory_status(as_json=True)

        inline_input = grpcclient.InferInput(tensor["name"], list(data.shape), tensor["datatype"])
        inline_input.set_data_from_numpy(data)
        shm_input = grpcclient.InferInput(tensor["name"], list(data.shape), tensor["datatype"])
        shm_input.set_shared_memory("frame_in", data.nbytes)
        shm_output = grpcclient.InferRequestedOutput(output["name"])
        shm_output.set_shared_memory("scores_out", out_bytes)

        def inline_call() -> np.ndarray:
            return client.infer(model, [inline_input]).as_numpy(output["name"])

        def shm_call() -> np.ndarray:
            client.infer(model, [shm_input], outputs=[shm_output])
            shape = [int(d) for d in output["shape"]]
            return shm.get_contents_as_numpy(out_handle, np.float32, shape).copy()

        timings = {}
        results = {}
        for name, call in (("inline", inline_call), ("shm", shm_call)):
            results[name] = call()
            samples = []
            for _ in range(20):
                start = time.perf_counter()
                call()
                samples.append((time.perf_counter() - start) * 1000)
            timings[name] = float(np.median(samples))
        client.unregister_system_shared_memory("frame_in")
        after = client.get_system_shared_memory_status(as_json=True)
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)
    return {
        "regions": sorted(status.get("regions", {})),
        "after_unregister": sorted(after.get("regions", {})),
        "inline": results["inline"].reshape(-1).tolist(),
        "shm": results["shm"].reshape(-1).tolist(),
        "inline_ms": timings["inline"],
        "shm_ms": timings["shm"],
    }


def main() -> int:
    url, model, path = sys.argv[1:4]
    client = grpcclient.InferenceServerClient(url=url)
    if "--repository" in sys.argv:
        print(json.dumps(repository(client, model)))
        return 0
    if "--shm" in sys.argv:
        print(json.dumps(shared_memory(client, model, path, "--group-shared" in sys.argv)))
        return 0
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(model)
    server = client.get_server_metadata(as_json=True)
    meta = client.get_model_metadata(model, as_json=True)
    data = np.load(path)
    tensor = meta["inputs"][0]
    infer_input = grpcclient.InferInput(tensor["name"], list(data.shape), tensor["datatype"])
    infer_input.set_data_from_numpy(data)
    output_name = meta["outputs"][0]["name"]
    result = client.infer(
        model, [infer_input], outputs=[grpcclient.InferRequestedOutput(output_name)]
    )
    scores = result.as_numpy(output_name).reshape(-1)
    response = result.get_response(as_json=True)
    print(
        json.dumps(
            {
                "server": server["name"],
                "input": tensor["name"],
                "output": output_name,
                "top1": int(np.argmax(scores)),
                "score": float(scores.max()),
                "parameters": response.get("parameters", {}),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
