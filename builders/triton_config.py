"""Triton `config.pbtxt` entries, built as `ModelConfig` protobufs and never as text.

Why protobufs: a typo in hand-written pbtxt is found by Triton at load time, in production; a
field set on the message is checked by protobuf when the builder runs. `ModelRepository` writes
the message with text_format, so what is published is exactly what was built here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc.model_config_pb2 import ModelConfig

from builders.errors import BadOption
from builders.specs import ExportSpec, TensorSpec

INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"


@dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching. `max_batch_size` 0 turns batching off (dims then carry the batch axis)."""

    max_batch_size: int = 32
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise BadOption(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise BadOption(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        bad = [size for size in self.preferred_batch_sizes if size < 1 or size > max(self.max_batch_size, 1)]
        if bad:
            raise BadOption(f"preferred batch sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})")

    def as_dict(self) -> dict[str, object]:
        return {
            "max_batch_size": self.max_batch_size,
            "dynamic_batching": self.dynamic_batching,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "max_queue_delay_us": self.max_queue_delay_us,
        }


@dataclass(frozen=True)
class InstanceOptions:
    """How many copies of the model Triton runs, and where."""

    count: int = 1
    kind: str = "KIND_CPU"  # KIND_CPU | KIND_GPU | KIND_AUTO
    gpus: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.count < 1:
            raise BadOption(f"instance count must be >= 1, got {self.count}")
        if self.kind not in INSTANCE_KINDS:
            raise BadOption(f"instance kind {self.kind!r} is not one of {INSTANCE_KINDS}")

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "kind": self.kind, "gpus": list(self.gpus)}


def data_type(dtype: str) -> int:
    """Triton dtype name ("FP32", "BYTES" ...) -> the DataType enum value (BYTES is TYPE_STRING)."""
    name = "TYPE_STRING" if dtype == "BYTES" else f"TYPE_{dtype}"
    try:
        return mc.DataType.Value(name)
    except ValueError as exc:
        raise BadOption(f"no Triton data type for {dtype!r}") from exc


def _add_tensors(
    target: list, tensors: tuple[TensorSpec, ...], message: type, *, batched: bool
) -> None:  # target: a repeated field
    for tensor in tensors:
        dims = list(tensor.dims) if batched else [-1, *tensor.dims]
        target.append(message(name=tensor.name, data_type=data_type(tensor.dtype), dims=dims))


def _base(name: str, spec: ExportSpec, batching: BatchingOptions, instances: InstanceOptions) -> ModelConfig:
    config = ModelConfig(name=name, max_batch_size=batching.max_batch_size)
    batched = batching.max_batch_size > 0
    _add_tensors(config.input, spec.inputs, mc.ModelInput, batched=batched)
    _add_tensors(config.output, spec.outputs, mc.ModelOutput, batched=batched)
    if batched and batching.dynamic_batching:
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    group = config.instance_group.add()
    group.count = instances.count
    group.kind = mc.ModelInstanceGroup.Kind.Value(instances.kind)
    group.gpus.extend(instances.gpus)
    return config


def model_config(
    name: str,
    spec: ExportSpec,
    *,
    platform: str = ONNX_PLATFORM,
    batching: BatchingOptions = BatchingOptions(),
    instances: InstanceOptions = InstanceOptions(),
) -> ModelConfig:
    """The config of an exported model: `onnxruntime_onnx` (model.onnx) or `tensorrt_plan` (model.plan).

    Example:
        model_config("ranker", spec, batching=BatchingOptions(max_batch_size=64, preferred_batch_sizes=(16, 32)))
    """
    config = _base(name, spec, batching, instances)
    config.platform = platform
    return config


def python_model_config(
    name: str,
    spec: ExportSpec,
    *,
    batching: BatchingOptions = BatchingOptions(),
    instances: InstanceOptions = InstanceOptions(),
) -> ModelConfig:
    """The config of a Python-backend model (the tokenizer): `backend: "python"`, model.py in the version."""
    config = _base(name, spec, batching, instances)
    config.backend = "python"
    return config


@dataclass(frozen=True)
class EnsembleStep:
    """One model in an ensemble: its tensors mapped to the ensemble's (`input_map`: model name -> ensemble name)."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]
    version: int = -1  # -1: the step takes whatever version is served


def ensemble_config(
    name: str,
    *,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    steps: list[EnsembleStep],
    max_batch_size: int,
) -> ModelConfig:
    """An ensemble (`platform: "ensemble"`): raw text in, the last step's outputs out.

    Why steps name no version by default: the control plane rolls the member models' versions
    forward and back, and the ensemble must follow without being republished.
    """
    if not steps:
        raise BadOption(f"ensemble {name!r} needs at least one step")
    config = ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    batched = max_batch_size > 0
    _add_tensors(config.input, inputs, mc.ModelInput, batched=batched)
    _add_tensors(config.output, outputs, mc.ModelOutput, batched=batched)
    for step in steps:
        entry = config.ensemble_scheduling.step.add()
        entry.model_name = step.model
        entry.model_version = step.version
        for key, value in step.input_map.items():
            entry.input_map[key] = value
        for key, value in step.output_map.items():
            entry.output_map[key] = value
    return config
