"""A build as a plan of small steps, each ending OK, FAIL or SKIPPED with its figures.

    preflight -> load -> export -> verify_random -> verify_golden -> optimize (+ verify) -> tensorrt -> quality -> publish

Why steps and not one function: a person reading a failed build must see which stage failed and
with which figures, and the CLI shows a progress bar per stage. A failure is a status, not an
exception that unwinds everything: the first FAIL stops the plan, the remaining steps are reported
SKIPPED, and nothing is published, because publishing is the last step and every artifact is made
in a temporary folder first (`ModelRepository.publish_version` is atomic on top of that).

Any model kind plugs in through a `load` function that returns a `ModelSource` (the ranker in
builders/ranker.py, the Hugging Face text models in builders/text_models.py).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from builders import tensorrt
from builders.errors import BadOption, BuilderError, BuildFailed
from builders.manifest import Manifest
from builders.repository import ModelRepository, PublishedVersion, validate_model_name
from builders.specs import NUMPY_DTYPES, ExportSpec, Tolerance
from builders.triton_config import (
    ONNX_PLATFORM,
    BatchingOptions,
    InstanceOptions,
    model_config,
)

if TYPE_CHECKING:
    import torch


FORMATS = ("onnx", "tensorrt")
TENSORRT_SUFFIX = "_trt"
DEFAULT_TOLERANCE = Tolerance()
FP16_TOLERANCE = Tolerance(atol=2e-2, rtol=2e-2)  # FP16 keeps about 3 significant digits
DEFAULT_BATCHING = BatchingOptions()
DEFAULT_INSTANCES = InstanceOptions()
DEFAULT_ENGINE = tensorrt.EngineOptions()

Batch = Mapping[str, np.ndarray]
Runner = Callable[[Batch], list[np.ndarray]]  # runs the built model file on one batch


def builder_version() -> str:
    """The installed shepherd version: what the manifest records as "builder_version"."""
    try:
        return metadata.version("triton-shepherd")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Status(StrEnum):
    OK = "OK"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class StepResult:
    name: str
    status: Status
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "seconds": round(self.seconds, 3),
            "figures": self.figures,
            "message": self.message,
        }


@dataclass(frozen=True)
class ModelSource:
    """A loaded source model and everything the generic steps need to export, verify and score it.

    `module` is called as `module(**inputs)` (see builders.onnx_export). `random_batches(count,
    seed)` makes inputs in the model's valid range; `golden_batches` are the golden set's inputs;
    `quality(run)` scores the built file on the golden set (run = the model on one batch) and
    returns a builders.quality dict. `info` goes into the manifest's "source".
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

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise BadOption(f"formats {list(self.formats)} must be a non-empty subset of {list(FORMATS)}")
        if self.random_batches < 1:
            raise BadOption(f"random_batches must be >= 1, got {self.random_batches}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "opset": self.opset,
            "batching": self.batching.as_dict(),
            "instances": self.instances.as_dict(),
            "optimize": self.optimize,
            "fp16": self.fp16,
            "random_batches": self.random_batches,
            "seed": self.seed,
        }

    def model_names(self) -> dict[str, str]:
        """Format -> the Triton model it is published as (TensorRT beside ONNX gets `<name>_trt`)."""
        if self.formats == ("tensorrt",):
            return {"tensorrt": self.name}
        return {fmt: self.name if fmt == "onnx" else self.name + TENSORRT_SUFFIX for fmt in self.formats}


@dataclass(frozen=True)
class BuildResult:
    model: str
    kind: str
    steps: tuple[StepResult, ...]
    published: tuple[PublishedVersion, ...] = ()
    error: BuilderError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    @property
    def version(self) -> int | None:
        return self.published[0].version if self.published else None

    def raise_for_failure(self) -> None:
        if self.error is not None:
            raise self.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "kind": self.kind,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": None if self.error is None else str(self.error),
            "error_type": None if self.error is None else type(self.error).__name__,
            "published": [
                {"model": p.model, "version": p.version, "path": str(p.path), "format": p.manifest.format}
                for p in self.published
            ],
            "steps": [step.as_dict() for step in self.steps],
        }


class Skip(Exception):
    """Raised by a step that has nothing to do with these options."""


# Called with (step name, None) when a step starts and (step name, result) when it ends.
Progress = Callable[[str, StepResult | None], None]


@dataclass
class _Build:
    """What the steps hand to each other; lives for one build only."""

    repo: ModelRepository
    options: BuildOptions
    load: Callable[[], ModelSource]
    workdir: Path
    source: ModelSource | None = None
    onnx_path: Path | None = None
    served_onnx: Path | None = None
    plan_path: Path | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    published: list[PublishedVersion] = field(default_factory=list)
    extra_files: Mapping[str, Path | bytes] = field(default_factory=dict)

    @property
    def src(self) -> ModelSource:
        if self.source is None:
            raise BuildFailed("no source loaded")
        return self.source

    @property
    def spec(self) -> ExportSpec:
        return replace(self.src.spec, opset=self.options.opset)

    @property
    def tolerance(self) -> Tolerance:
        return self.options.tolerance or self.src.tolerance


Step = tuple[str, Callable[[_Build], dict[str, Any]]]


def _preflight(b: _Build) -> dict[str, Any]:
    """Fail before any work when a requested format cannot be built on this machine."""
    if "tensorrt" not in b.options.formats:
        raise Skip("only ONNX asked for")
    tensorrt.check_available()
    return {"tensorrt": "available"}


def _load(b: _Build) -> dict[str, Any]:
    b.source = b.load()
    return {"kind": b.source.kind, **{k: v for k, v in b.source.info.items() if k != "files"}}


def _export(b: _Build) -> dict[str, Any]:
    from builders import onnx_export  # imports torch: only when a build runs

    b.onnx_path = onnx_export.export_onnx(b.src.module, b.spec, b.src.example, b.workdir / "model.onnx")
    b.served_onnx = b.onnx_path
    return {"opset": b.spec.opset, "bytes": b.onnx_path.stat().st_size}


def _verified(b: _Build, path: Path, label: str, batches: list[dict[str, np.ndarray]], tol: Tolerance) -> dict:
    from builders import onnx_export  # imports torch: only when a build runs

    report = onnx_export.verify_onnx(b.src.module, path, batches, b.spec, tol, label=label)
    b.verification[label] = report.as_dict() | {"tolerance": tol.as_dict()}
    onnx_export.require_verified(report)
    return report.as_dict()


def _verify_random(b: _Build) -> dict[str, Any]:
    assert b.onnx_path is not None
    batches = b.src.random_batches(b.options.random_batches, b.options.seed)
    return _verified(b, b.onnx_path, "random", batches, b.tolerance)


def _verify_golden(b: _Build) -> dict[str, Any]:
    assert b.onnx_path is not None
    if not b.src.golden_batches:
        raise BuildFailed(f"the {b.src.kind} source has no golden batches to verify on")
    return _verified(b, b.onnx_path, "golden", b.src.golden_batches, b.tolerance)


def _optimize(b: _Build) -> dict[str, Any]:
    from builders import onnx_export  # imports torch: only when a build runs

    if not (b.options.optimize or b.options.fp16):
        raise Skip("neither --optimize nor --fp16 asked for")
    assert b.onnx_path is not None
    optimized = onnx_export.optimize_onnx(b.onnx_path, b.workdir / "model.optimized.onnx", fp16=b.options.fp16)
    tol = b.options.fp16_tolerance if b.options.fp16 else b.tolerance
    random = b.src.random_batches(b.options.random_batches, b.options.seed + 1)
    figures = {
        "fp16": b.options.fp16,
        "bytes": optimized.stat().st_size,
        "random": _verified(b, optimized, "optimized_random", random, tol),
        "golden": _verified(b, optimized, "optimized_golden", b.src.golden_batches, tol),
    }
    b.served_onnx = optimized
    return figures


def _tensorrt(b: _Build) -> dict[str, Any]:
    if "tensorrt" not in b.options.formats:
        raise Skip("tensorrt not in --formats")
    assert b.onnx_path is not None
    calibration = b.src.golden_batches[: b.options.calibration_batches] if b.options.calibration_batches else None
    b.plan_path = tensorrt.build_engine(
        b.onnx_path, b.spec, b.options.engine, b.workdir / "model.plan", calibration_batches=calibration
    )
    return {"bytes": b.plan_path.stat().st_size, **b.options.engine.as_dict()}


def _quality(b: _Build) -> dict[str, Any]:
    from builders import onnx_export  # imports torch: only when a build runs

    assert b.served_onnx is not None
    session = onnx_export.onnx_session(b.served_onnx)
    names = b.spec.output_names
    dtypes = {t.name: t.dtype for t in b.spec.inputs}

    def run(batch: Batch) -> list[np.ndarray]:
        feeds = {name: np.asarray(batch[name]).astype(NUMPY_DTYPES[dtypes[name]]) for name in dtypes}
        return [np.asarray(out) for out in session.run(names, feeds)]

    b.quality = b.src.quality(run)
    return b.quality


def _publish(b: _Build) -> dict[str, Any]:
    """Publish every requested format; everything was made and verified before this step runs."""
    names = b.options.model_names()
    settings = {**b.options.as_dict(), "tolerance": b.tolerance.as_dict(), "spec": b.spec.as_dict()}
    staged: list[tuple[str, str, dict[str, Path | bytes], Any, dict[str, Any]]] = []
    if "onnx" in names:
        assert b.served_onnx is not None
        files: dict[str, Path | bytes] = {"model.onnx": b.served_onnx, **b.extra_files}
        config = model_config(
            names["onnx"], b.spec, platform=ONNX_PLATFORM, batching=b.options.batching, instances=b.options.instances
        )
        staged.append((names["onnx"], "onnx", files, config, settings))
    if "tensorrt" in names:
        assert b.plan_path is not None
        config = tensorrt.tensorrt_config(names["tensorrt"], b.spec, batching=b.options.batching)
        engine_settings = {**settings, "engine": b.options.engine.as_dict()}
        staged.append((names["tensorrt"], "tensorrt", {"model.plan": b.plan_path}, config, engine_settings))
    for model, fmt, files, config, model_settings in staged:
        manifest = Manifest(
            model=model,
            version=0,
            kind=b.src.kind,
            format=fmt,
            builder_version=builder_version(),
            source=b.src.info,
            settings=model_settings,
            verification=b.verification,
            quality=b.quality,
        )
        b.published.append(b.repo.publish_version(model, files=files, manifest=manifest, config=config))
    return {"versions": {p.model: p.version for p in b.published}}


def plan(options: BuildOptions) -> list[Step]:
    """The steps of a build, in order; each is a plain function of the build's state."""
    return [
        ("preflight", _preflight),
        ("load", _load),
        ("export", _export),
        ("verify_random", _verify_random),
        ("verify_golden", _verify_golden),
        ("optimize", _optimize),
        ("tensorrt", _tensorrt),
        ("quality", _quality),
        ("publish", _publish),
    ]


def run_step(
    name: str, function: Callable[[_Build], dict[str, Any]], build: _Build
) -> tuple[StepResult, BuilderError | None]:
    """Run one step and never raise: a Skip, a shepherd error or a foreign error becomes its status.

    A foreign error (a bug in a factory, an onnxruntime failure) is wrapped in BuildFailed so the
    CLI still names the step and exits non-zero; KeyboardInterrupt and SystemExit propagate.
    """
    started = time.perf_counter()
    try:
        figures = function(build)
    except Skip as skip:
        return StepResult(name, Status.SKIPPED, time.perf_counter() - started, message=str(skip)), None
    except BuilderError as exc:
        return StepResult(name, Status.FAIL, time.perf_counter() - started, message=str(exc)), exc
    except Exception as exc:
        error = BuildFailed(f"step {name} failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return StepResult(name, Status.FAIL, time.perf_counter() - started, message=str(error)), error
    return StepResult(name, Status.OK, time.perf_counter() - started, figures=figures), None


def build_model(
    repo: ModelRepository,
    load: Callable[[], ModelSource],
    options: BuildOptions,
    *,
    progress: Progress | None = None,
    extra_files: Mapping[str, Path | bytes] | None = None,
    steps: Sequence[Step] | None = None,
) -> BuildResult:
    """Run a build and return every step's result; the first FAIL stops it and nothing is published.

    The artifacts live in a temporary folder that is removed whatever happens; the repository is
    only touched by the last step, through the atomic `ModelRepository.publish_version`.
    `extra_files` are published beside model.onnx; `steps` replaces the standard `plan`.

    Example:
        result = build_model(ModelRepository(root), lambda: ranker_source(factory, weights), BuildOptions("ctr_ranker"))
        result.raise_for_failure()
    """
    results: list[StepResult] = []
    error: BuilderError | None = None
    with tempfile.TemporaryDirectory(prefix="shepherd-build-") as folder:
        build = _Build(repo=repo, options=options, load=load, workdir=Path(folder), extra_files=extra_files or {})
        for name, function in steps or plan(options):
            if error is not None:
                results.append(StepResult(name, Status.SKIPPED, message="an earlier step failed"))
                _notify(progress, name, results[-1])
                continue
            _notify(progress, name, None)
            result, error = run_step(name, function, build)
            results.append(result)
            _notify(progress, name, result)
        kind = build.source.kind if build.source else "unknown"
    return BuildResult(
        model=options.name, kind=kind, steps=tuple(results), published=tuple(build.published), error=error
    )


def _notify(progress: Progress | None, name: str, result: StepResult | None) -> None:
    if progress is not None:
        progress(name, result)


def iter_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Split column arrays (batch axis first) into batches of `batch_size` rows."""
    rows = len(next(iter(arrays.values())))
    for start in range(0, rows, batch_size):
        yield {name: value[start : start + batch_size] for name, value in arrays.items()}
