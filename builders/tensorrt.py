"""TensorRT engines from a verified ONNX file, published as `model.plan` (`platform: "tensorrt_plan"`).

Why the checks come first: an engine can only be built on a machine with an NVIDIA GPU and the
TensorRT libraries, and a build that fails half-way must leave nothing behind. `check_available`
runs before any file is written and raises EngineUnavailable with the reason.

NOT EXERCISED: no machine of this project has TensorRT, so `build_engine` past the availability
check has never run here. The pure parts (profiles, the Triton config) are unit-tested.
Profiles: every dynamic dim of every input gets min/opt/max: the batch axis from 1 to
`max_batch`, a -1 dim (sequence length) from `min_seq` to `max_seq`.
"""

from __future__ import annotations

import glob
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builders.errors import BadOption, BuildFailed, EngineUnavailable
from builders.specs import NUMPY_DTYPES, ExportSpec
from builders.triton_config import TENSORRT_PLATFORM, BatchingOptions, InstanceOptions, model_config

DEFAULT_BATCHING = BatchingOptions()
GPU_INSTANCE = InstanceOptions(kind="KIND_GPU")


@dataclass(frozen=True)
class EngineOptions:
    """How the engine is built. `opt_*` of 0 means: half of the max (at least the min)."""

    fp16: bool = False
    int8: bool = False  # needs calibration batches
    min_batch: int = 1
    opt_batch: int = 0
    max_batch: int = 32
    min_seq: int = 1
    opt_seq: int = 0
    max_seq: int = 128
    workspace_mb: int = 1024
    timing_cache: str | None = None  # a file reused between builds (created when missing)

    def __post_init__(self) -> None:
        for low, opt, high, what in (
            (self.min_batch, self.opt_batch, self.max_batch, "batch"),
            (self.min_seq, self.opt_seq, self.max_seq, "sequence"),
        ):
            if not 1 <= low <= high or (opt and not low <= opt <= high):
                raise BadOption(f"{what} profile needs 1 <= min <= opt <= max, got min {low}, opt {opt}, max {high}")
        if self.workspace_mb < 1:
            raise BadOption(f"workspace_mb must be >= 1, got {self.workspace_mb}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "fp16": self.fp16,
            "int8": self.int8,
            "batch": [self.min_batch, _opt(self.min_batch, self.opt_batch, self.max_batch), self.max_batch],
            "sequence": [self.min_seq, _opt(self.min_seq, self.opt_seq, self.max_seq), self.max_seq],
            "workspace_mb": self.workspace_mb,
            "timing_cache": self.timing_cache,
        }


def _opt(low: int, opt: int, high: int) -> int:
    return opt if opt else max(low, high // 2)


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shape of one input, batch axis included, for one optimisation profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profiles_for(spec: ExportSpec, options: EngineOptions) -> tuple[ShapeProfile, ...]:
    """The optimisation profile of every input: batch axis and -1 dims from the options, fixed dims as is."""
    batch = (options.min_batch, _opt(options.min_batch, options.opt_batch, options.max_batch), options.max_batch)
    seq = (options.min_seq, _opt(options.min_seq, options.opt_seq, options.max_seq), options.max_seq)
    profiles = []
    for tensor in spec.inputs:
        if tensor.dtype == "BYTES":
            raise BadOption(f"input {tensor.name!r} is BYTES: a TensorRT engine takes tensors only")
        shapes = [
            (batch[i], *(seq[i] if dim == -1 else dim for dim in tensor.dims))
            for i in range(3)  # 0: min, 1: opt, 2: max
        ]
        profiles.append(ShapeProfile(tensor.name, shapes[0], shapes[1], shapes[2]))
    return tuple(profiles)


def tensorrt_config(
    name: str,
    spec: ExportSpec,
    *,
    batching: BatchingOptions = DEFAULT_BATCHING,
    instances: InstanceOptions = GPU_INSTANCE,
) -> Any:
    """The Triton config of an engine: `platform: "tensorrt_plan"`, on the GPU by default."""
    return model_config(name, spec, platform=TENSORRT_PLATFORM, batching=batching, instances=instances)


def check_available() -> Any:
    """Return the `tensorrt` module, or raise EngineUnavailable saying what is missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise EngineUnavailable(
            "TensorRT is not installed here (import tensorrt failed: "
            f"{exc}); build the engine on a machine with an NVIDIA GPU and the tensorrt package, "
            "or use --formats onnx. Nothing was published."
        ) from exc
    if not _gpu_present():
        raise EngineUnavailable(
            "no NVIDIA GPU found (torch.cuda.is_available() is false and there is no /dev/nvidia*); "
            "a TensorRT engine is built for the GPU that runs it. Nothing was published."
        )
    return trt


def _gpu_present() -> bool:
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def build_engine(
    onnx_path: Path,
    spec: ExportSpec,
    options: EngineOptions,
    dst: Path,
    *,
    calibration_batches: Sequence[dict[str, np.ndarray]] | None = None,
) -> Path:
    """Build a serialised engine from `onnx_path` into `dst` (NOT EXERCISED on any machine here).

    FP16 when asked; INT8 when asked AND calibration batches are given (an entropy calibrator
    over them, its cache beside the timing cache). Raises EngineUnavailable before writing
    anything when TensorRT or the GPU is missing.
    """
    profiles = profiles_for(spec, options)  # bad options fail before the GPU checks
    if options.int8 and not calibration_batches:
        raise BadOption("INT8 needs calibration batches (pass --calibration-batches N > 0)")
    trt = check_available()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(_read(Path(onnx_path), "ONNX file")):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineUnavailable(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for shape in profiles:
        profile.set_shape(shape.name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(profile)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.int8 and calibration_batches:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        cache_file = Path(options.timing_cache or dst.with_suffix(".timing")).with_suffix(".calib")
        config.int8_calibrator = _calibrator(trt, spec, list(calibration_batches), cache_file)
    cache = _load_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineUnavailable(f"TensorRT failed to build an engine from {onnx_path}; see its log above")
    try:
        if options.timing_cache and cache is not None:
            Path(options.timing_cache).write_bytes(memoryview(config.get_timing_cache().serialize()))
        dst = Path(dst)
        dst.write_bytes(memoryview(serialized))
    except OSError as exc:
        raise BuildFailed(f"cannot write the engine or its timing cache: {exc}") from exc
    return dst


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BuildFailed(f"{what} {path} cannot be read: {exc}") from exc


def _load_timing_cache(config: Any, path: str | None) -> Any:
    """Reuse tactic timings between builds: the same engine builds in seconds instead of minutes."""
    data = _read(Path(path), "timing cache") if path and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _calibrator(trt: Any, spec: ExportSpec, batches: list[dict[str, np.ndarray]], cache_file: Path) -> Any:
    """An IInt8EntropyCalibrator2 over the given batches; device buffers through torch (CUDA)."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.batches = iter(batches)
            self.size = len(next(iter(batches[0].values())))
            self.current: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return self.size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(self.batches)
            except StopIteration:
                return None
            dtypes = {t.name: NUMPY_DTYPES[t.dtype] for t in spec.inputs}
            self.current = [torch.from_numpy(np.ascontiguousarray(batch[n]).astype(dtypes[n])).cuda() for n in names]
            return [int(tensor.data_ptr()) for tensor in self.current]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()
