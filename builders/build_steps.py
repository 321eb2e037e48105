"""The standard steps of a build, each a plain function of the build context and its declared inputs.

    step           needs                                              makes
    preflight      -                                                  -
    load           -                                                  source, spec, tolerance
    export         source, spec                                       onnx, served_onnx
    verify_random  source, spec, onnx, tolerance                      verification
    verify_golden  source, spec, onnx, tolerance, verification        verification
    optimize       source, spec, onnx, tolerance, verification        served_onnx, verification
    tensorrt       source, spec, onnx                                 engine
    quality        source, spec, served_onnx                          quality
    publish        source, spec, tolerance, verification, quality,    published
                   served_onnx (ONNX asked for), engine (TensorRT asked for),
                   entries (a kind that publishes more models with its own, e.g. a text model's tokenizer)

Why functions that make new values instead of one mutable state: a step cannot depend on a value
it did not declare, so reordering or replacing a step either works or fails naming what is
missing. builders.pipeline puts these steps in order for a set of options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from builders import tensorrt
from builders.build_inputs import Batch, BuildContext, BuildOptions, ModelSource
from builders.errors import BuildFailed
from builders.manifest import Manifest, builder_version
from builders.plan import Done, Step
from builders.repository import NewVersion
from builders.specs import NUMPY_DTYPES, ExportSpec, Tolerance
from builders.triton_config import ONNX_PLATFORM, model_config

Verification = dict[str, Any]  # label ("random", "golden", ...) -> that verification's figures


def preflight(ctx: BuildContext) -> Done:
    """Fail before any work when TensorRT, which was asked for, cannot be built on this machine."""
    tensorrt.check_available()
    return Done({"tensorrt": "available"})


LOAD_MAKES = ("source", "spec", "tolerance")


def loaded(ctx: BuildContext, source: ModelSource) -> Done:
    """What a `load` step hands on for `source`: the spec takes the options' opset, the options' tolerance wins."""
    made = {
        "source": source,
        "spec": replace(source.spec, opset=ctx.options.opset),
        "tolerance": ctx.options.tolerance or source.tolerance,
    }
    return Done({"kind": source.kind, **{k: v for k, v in source.info.items() if k != "files"}}, made)


def load_step(load: Callable[[], ModelSource]) -> Step:
    """The `load` step of a source given as a function (a ranker's factory and weights, a custom source)."""

    def run(ctx: BuildContext) -> Done:
        return loaded(ctx, load())

    return Step("load", run, makes=LOAD_MAKES)


def export_step(*, dynamo: bool = True) -> Step:
    """The `export` step with the dynamo exporter, or the TorchScript one for modules dynamo cannot trace."""

    def run(ctx: BuildContext, *, source: ModelSource, spec: ExportSpec) -> Done:
        from builders import onnx_export  # imports torch: only when a build runs

        path = onnx_export.export_onnx(source.module, spec, source.example, ctx.workdir / "model.onnx", dynamo=dynamo)
        figures = {"opset": spec.opset, "bytes": path.stat().st_size, "exporter": "dynamo" if dynamo else "torchscript"}
        return Done(figures, {"onnx": path, "served_onnx": path})

    return Step("export", run, needs=("source", "spec"), makes=("onnx", "served_onnx"))


def _verify(
    source: ModelSource, spec: ExportSpec, path: Path, label: str, batches: list[dict[str, np.ndarray]], tol: Tolerance
) -> tuple[dict[str, Any], Verification]:
    """The report's figures, and the manifest's verification entry for `label` (figures and tolerance)."""
    from builders import onnx_export  # imports torch: only when a build runs

    report = onnx_export.verify_onnx(source.module, path, batches, spec, tol, label=label)
    onnx_export.require_verified(report)
    return report.as_dict(), {label: report.as_dict() | {"tolerance": tol.as_dict()}}


def verify_random(
    ctx: BuildContext, *, source: ModelSource, spec: ExportSpec, onnx: Path, tolerance: Tolerance
) -> Done:
    batches = source.random_batches(ctx.options.random_batches, ctx.options.seed)
    figures, entry = _verify(source, spec, onnx, "random", batches, tolerance)
    return Done(figures, {"verification": entry})


def verify_golden(
    ctx: BuildContext,
    *,
    source: ModelSource,
    spec: ExportSpec,
    onnx: Path,
    tolerance: Tolerance,
    verification: Verification,
) -> Done:
    if not source.golden_batches:
        raise BuildFailed(f"the {source.kind} source has no golden batches to verify on")
    figures, entry = _verify(source, spec, onnx, "golden", source.golden_batches, tolerance)
    return Done(figures, {"verification": verification | entry})


def optimize(
    ctx: BuildContext,
    *,
    source: ModelSource,
    spec: ExportSpec,
    onnx: Path,
    tolerance: Tolerance,
    verification: Verification,
) -> Done:
    """Optimise (and with --fp16 halve) the export, then verify the result exactly as the export was."""
    from builders import onnx_export  # imports torch: only when a build runs

    options = ctx.options
    optimized = onnx_export.optimize_onnx(onnx, ctx.workdir / "model.optimized.onnx", fp16=options.fp16)
    tol = options.fp16_tolerance if options.fp16 else tolerance
    random = source.random_batches(options.random_batches, options.seed + 1)
    random_figures, random_entry = _verify(source, spec, optimized, "optimized_random", random, tol)
    golden_figures, golden_entry = _verify(source, spec, optimized, "optimized_golden", source.golden_batches, tol)
    figures = {
        "fp16": options.fp16,
        "bytes": optimized.stat().st_size,
        "random": random_figures,
        "golden": golden_figures,
    }
    return Done(figures, {"served_onnx": optimized, "verification": verification | random_entry | golden_entry})


def build_tensorrt(ctx: BuildContext, *, source: ModelSource, spec: ExportSpec, onnx: Path) -> Done:
    options = ctx.options
    calibration = source.golden_batches[: options.calibration_batches] if options.calibration_batches else None
    engine = tensorrt.build_engine(
        onnx, spec, options.engine, ctx.workdir / "model.plan", calibration_batches=calibration
    )
    return Done({"bytes": engine.stat().st_size, **options.engine.as_dict()}, {"engine": engine})


def measure_quality(source: ModelSource, spec: ExportSpec, path: Path) -> dict[str, Any]:
    """The source's golden-set quality of the ONNX file `path`, run by onnxruntime as Triton runs it."""
    from builders import onnx_export  # imports torch: only when a build runs

    session = onnx_export.onnx_session(path)
    names = spec.output_names
    dtypes = {t.name: t.dtype for t in spec.inputs}

    def run(batch: Batch) -> list[np.ndarray]:
        feeds = {name: np.asarray(batch[name]).astype(NUMPY_DTYPES[dtypes[name]]) for name in dtypes}
        try:
            outputs = session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises its own pybind types, all plain Exception subclasses
            raise BuildFailed(f"onnxruntime failed on a golden batch of {path}: {exc}") from exc
        return [np.asarray(out) for out in outputs]

    return source.quality(run)


def quality(ctx: BuildContext, *, source: ModelSource, spec: ExportSpec, served_onnx: Path) -> Done:
    """Score the file that will be served on the golden set, run by onnxruntime as Triton runs it."""
    measured = measure_quality(source, spec, served_onnx)
    return Done(measured, {"quality": measured})


def publish(
    ctx: BuildContext,
    *,
    source: ModelSource,
    spec: ExportSpec,
    tolerance: Tolerance,
    verification: Verification,
    quality: dict[str, Any],
    served_onnx: Path | None = None,
    engine: Path | None = None,
    entries: tuple[NewVersion, ...] = (),
    quantization: dict[str, Any] | None = None,
) -> Done:
    """Publish every requested format, and the `entries` the model kind adds, as ONE unit.

    Everything was made and verified before this step runs; `ModelRepository.publish_versions`
    makes all of it visible or none of it, so no model version is left without the entries it is
    served with. The model's own versions come first in "published".
    """
    options = ctx.options
    names = options.model_names()
    settings = {**options.as_dict(), "tolerance": tolerance.as_dict(), "spec": spec.as_dict()}
    staged: list[tuple[str, str, dict[str, Path | bytes], Any, dict[str, Any]]] = []
    if served_onnx is not None:
        files: dict[str, Path | bytes] = {"model.onnx": served_onnx, **source.extra_files}
        config = model_config(
            names["onnx"], spec, platform=ONNX_PLATFORM, batching=options.batching, instances=options.instances
        )
        staged.append((names["onnx"], "onnx", files, config, settings))
    if engine is not None:
        config = tensorrt.tensorrt_config(names["tensorrt"], spec, batching=options.batching)
        engine_settings = {**settings, "engine": options.engine.as_dict()}
        staged.append((names["tensorrt"], "tensorrt", {"model.plan": engine}, config, engine_settings))
    versions = [
        NewVersion(
            model,
            Manifest(
                model=model,
                version=0,
                kind=source.kind,
                format=fmt,
                builder_version=builder_version(),
                source=source.info,
                settings=model_settings,
                verification=verification,
                quality=quality,
                extra={"quantization": quantization} if quantization is not None and fmt == "onnx" else {},
            ),
            model_files,
            config,
        )
        for model, fmt, model_files, config, model_settings in staged
    ]
    published = ctx.repo.publish_versions([*versions, *entries])
    return Done({"versions": {p.model: p.version for p in published}}, {"published": published})


def publish_step(options: BuildOptions, *, entries: bool = False) -> Step:
    """The `publish` step, needing the ONNX file and the engine only for the formats asked for, the
    model kind's `entries` (made by an earlier step) when `entries` is true, and the `quantization`
    record (builders.quantize) when a quantized ONNX model is published."""
    names = options.model_names()
    files = (("served_onnx",) if "onnx" in names else ()) + (("engine",) if "tensorrt" in names else ())
    quantized = ("quantization",) if options.quantize is not None and "onnx" in names else ()
    needs = (
        *("source", "spec", "tolerance", "verification", "quality", *files),
        *(("entries",) if entries else ()),
        *quantized,
    )
    return Step("publish", publish, needs=needs, makes=("published",))


PREFLIGHT = Step("preflight", preflight)
VERIFY_RANDOM = Step(
    "verify_random", verify_random, needs=("source", "spec", "onnx", "tolerance"), makes=("verification",)
)
VERIFY_GOLDEN = Step(
    "verify_golden",
    verify_golden,
    needs=("source", "spec", "onnx", "tolerance", "verification"),
    makes=("verification",),
)
OPTIMIZE = Step(
    "optimize",
    optimize,
    needs=("source", "spec", "onnx", "tolerance", "verification"),
    makes=("served_onnx", "verification"),
)
TENSORRT = Step("tensorrt", build_tensorrt, needs=("source", "spec", "onnx"), makes=("engine",))
QUALITY = Step("quality", quality, needs=("source", "spec", "served_onnx"), makes=("quality",))
