"""What the local API says about a model beyond its metadata: Triton's model configuration
and statistics extensions (``ModelConfig``, ``ModelStatistics``), built from a loaded model."""

from __future__ import annotations

from agent.inference.engine import LoadedModel
from agent.inference.modelfile import TensorInfo
from protos import inference_pb2 as pb

__all__ = ["DATA_TYPES", "model_config", "model_statistics", "output_shape"]

# numpy dtype name -> Triton's DataType
DATA_TYPES: dict[str, pb.DataType] = {
    "bool": pb.TYPE_BOOL,
    "uint8": pb.TYPE_UINT8,
    "uint16": pb.TYPE_UINT16,
    "uint32": pb.TYPE_UINT32,
    "uint64": pb.TYPE_UINT64,
    "int8": pb.TYPE_INT8,
    "int16": pb.TYPE_INT16,
    "int32": pb.TYPE_INT32,
    "int64": pb.TYPE_INT64,
    "float16": pb.TYPE_FP16,
    "float32": pb.TYPE_FP32,
    "float64": pb.TYPE_FP64,
    "bytes_": pb.TYPE_STRING,
}
_NS_PER_MS = 1_000_000


def output_shape(model: LoadedModel, index: int) -> tuple[int, ...]:
    """An output's shape as the model produces it: the file's, or, where the file gives none
    (a detection post-process), what its warm-up run produced."""
    declared = model.info.outputs[index].shape
    return declared if declared else model.output_shapes[index]


def model_config(model: LoadedModel, runtime: str) -> pb.ModelConfigResponse:
    """Triton's configuration of ``model``: no batching (the batch dimension is in the dims),
    its tensors, and what runs it here."""

    def kind(t: TensorInfo) -> pb.DataType:
        return DATA_TYPES.get(t.dtype, pb.TYPE_INVALID)

    config = pb.ModelConfig(
        name=model.name,
        platform="tensorflow_lite",
        max_batch_size=0,
        backend=model.backend,
        runtime=runtime,
        input=[
            pb.ModelInput(name=t.name, data_type=kind(t), dims=t.shape) for t in model.info.inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=kind(t), dims=output_shape(model, i))
            for i, t in enumerate(model.info.outputs)
        ],
    )
    return pb.ModelConfigResponse(config=config)


def model_statistics(model: LoadedModel) -> pb.ModelStatistics:
    """Triton's statistics of ``model`` since the agent started (each request is one
    inference and one execution: no batching)."""
    stats = model.stats.snapshot()
    ok = stats.requests - stats.errors

    def duration(count: int, ms: float) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=max(0, count), ns=int(ms * _NS_PER_MS))

    return pb.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference=int(stats.last_inference * 1000),
        inference_count=max(0, ok),
        execution_count=max(0, ok),
        inference_stats=pb.InferStatistics(
            success=duration(ok, stats.success_ms),
            fail=duration(stats.errors, stats.fail_ms),
            queue=duration(stats.queue_ms.count, stats.queue_ms.total),
            compute_infer=duration(stats.compute_ms.count, stats.compute_ms.total),
        ),
        memory_usage=[pb.MemoryUsage(type="CPU", id=0, byte_size=model.memory_bytes)],
    )
