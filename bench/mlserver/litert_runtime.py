"""A LiteRT custom runtime for MLServer: the peer a user would otherwise deploy.

Loaded by MLServer from model-settings.json ("implementation": "litert_runtime.LiteRTModel");
runs in MLServer's own environment (.venv-mlserver), never imported by EdgeFleet.
"""

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class LiteRTModel(MLModel):
    """One LiteRT interpreter behind MLServer's OIP v2 endpoints."""

    async def load(self) -> bool:
        self._interpreter = Interpreter(model_path=self.settings.parameters.uri, num_threads=1)
        self._interpreter.allocate_tensors()
        detail = self._interpreter.get_input_details()[0]
        self._input = detail["index"]
        self._shape = tuple(detail["shape"])
        self._dtype = detail["dtype"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = NumpyCodec.decode_input(payload.inputs[0])
        self._interpreter.set_tensor(
            self._input, np.asarray(data, dtype=self._dtype).reshape(self._shape)
        )
        self._interpreter.invoke()
        result = self._interpreter.get_tensor(self._output)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("output", result)]
        )
