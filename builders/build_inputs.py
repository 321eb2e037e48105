"""What a build is given: the person's options, the loaded source model, and the build's fixed context.

Why a module of their own: the standard steps (builders.build_steps), the plan that orders them
(builders.pipeline) and every model kind (ranker, text models) use these types, and none of
them should have to import the others to get at them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from builders import tensorrt
from builders.errors import BadOption
from builders.repository import ModelRepository, validate_model_name
from builders.specs import ExportSpec, Tolerance
from builders.triton_config import BatchingOptions, InstanceOptions

if TYPE_CHECKING:
    import torch

    from builders.quantize import QuantizeOptions


FORMATS = ("onnx", "tensorrt")
TENSORRT_SUFFIX = "_trt"
DEFAULT_TOLERANCE = Tolerance()
FP16_TOLERANCE = Tolerance(atol=2e-2, rtol=2e-2)  # FP16 keeps about 3 significant digits
DEFAULT_BATCHING = BatchingOptions()
DEFAULT_INSTANCES = InstanceOptions()
DEFAULT_ENGINE = tensorrt.EngineOptions()

Batch = Mapping[str, np.ndarray]
Runner = Callable[[Batch], list[np.ndarray]]  # runs the built model file on one batch


@dataclass(frozen=True)
class ModelSource:
    """A loaded source model and everything the generic steps need to export, verify and score it.

    `module` is called as `module(**inputs)` (see builders.onnx_export). `random_batches(count,
    seed)` makes inputs in the model's valid range; `golden_batches` are the golden set's inputs;
    `quality(run)` scores the built file on the golden set (run = the model on one batch) and
    returns a builders.quality dict. `info` goes into the manifest's "source"; `extra_files` are
    published beside model.onnx (a text model's tokenizer.json).
    """

    kind: str  # intent | embedder | ranker | custom
    module: torch.nn.Module
    spec: ExportSpec
    example: dict[str, torch.Tensor]
    random_batches: Callable[[int, int], list[dict[str, np.ndarray]]]
    golden_batches: list[dict[str, np.ndarray]]
    quality: Callable[[Runner], dict[str, Any]]
    tolerance: Tolerance = DEFAULT_TOLERANCE
    info: dict[str, Any] = field(default_factory=dict)
    extra_files: Mapping[str, Path | bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a person can choose about a build (the CLI's common options)."""

    name: str
    formats: tuple[str, ...] = ("onnx",)
    opset: int = 17
    batching: BatchingOptions = DEFAULT_BATCHING
    instances: InstanceOptions = DEFAULT_INSTANCES
    optimize: bool = False
    fp16: bool = False
    fp16_tolerance: Tolerance = FP16_TOLERANCE
    tolerance: Tolerance | None = None  # None: the source's own tolerance
    random_batches: int = 4
    seed: int = 0
    engine: tensorrt.EngineOptions = DEFAULT_ENGINE
    calibration_batches: int = 0  # >0: INT8 TensorRT calibrated on that many golden batches
    quantize: QuantizeOptions | None = None  # a compressed ONNX version behind a quality gate (builders.quantize)

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise BadOption(f"formats {list(self.formats)} must be a non-empty subset of {list(FORMATS)}")
        if self.random_batches < 1:
            raise BadOption(f"random_batches must be >= 1, got {self.random_batches}")
        if self.quantize is not None and self.fp16:
            raise BadOption("--fp16 and --quantize both convert the ONNX model; use --quantize fp16 alone")
        if self.quantize is not None and "onnx" not in self.formats:
            raise BadOption("--quantize makes an ONNX model: add onnx to --formats")

    def as_dict(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "opset": self.opset,
            "batching": self.batching.as_dict(),
            "instances": self.instances.as_dict(),
            "optimize": self.optimize,
            "fp16": self.fp16,
            "quantize": None if self.quantize is None else self.quantize.as_dict(),
            "random_batches": self.random_batches,
            "seed": self.seed,
        }

    def model_names(self) -> dict[str, str]:
        """Format -> the Triton model it is published as (TensorRT beside ONNX gets `<name>_trt`)."""
        if self.formats == ("tensorrt",):
            return {"tensorrt": self.name}
        return {fmt: self.name if fmt == "onnx" else self.name + TENSORRT_SUFFIX for fmt in self.formats}


@dataclass(frozen=True)
class BuildContext:
    """What every step of one build may read and nothing changes: the repository, the options, a scratch folder.

    Everything a step makes for a later one goes through the plan's declared values instead.
    """

    repo: ModelRepository
    options: BuildOptions
    workdir: Path
