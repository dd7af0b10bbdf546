"""Classify a preprocessed tensor through an OIP v2 server with tritonclient.

Runs in its own environment (.venv-triton), as an app on a device would:

    python oip_client.py URL MODEL INPUT.npy

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


def main() -> int:
    url, model, path = sys.argv[1:4]
    client = grpcclient.InferenceServerClient(url=url)
    if "--repository" in sys.argv:
        print(json.dumps(repository(client, model)))
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
