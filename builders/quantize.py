"""Compressed ONNX versions (INT8 dynamic, INT8 static, FP16) that must prove they are no worse.

    ... -> verify_golden -> optimize -> quantize -> tensorrt -> quality -> quality_gate -> ... -> publish

Why a gate and not just a conversion: a quantized graph always loads and always answers; whether
it still ranks, classifies or retrieves as well as its float source is a measurement. The
`quantize` step takes the verified float graph (`served_onnx`: the export, or its optimised copy),
scores it on the golden set, quantizes it with onnxruntime's own tools, and compares the two
graphs in onnxruntime on random and golden inputs (max abs error, per-row cosine for embedders,
arg-max agreement for classifiers). `quality` then scores the quantized file exactly as it scores
any build, and `quality_gate` refuses a drop over `QuantizeOptions.max_quality_drop` (absolute,
default 0.01): a VerificationFailed (exit 41) naming the metric, both figures and the drop, so
nothing is published. The manifest's `quantization` entry records the float graph's sha256, the
method, the settings and every figure.

Methods:
    int8-dynamic   onnxruntime.quantization.quantize_dynamic: INT8 weights, activations quantized
                   per batch at run time; no calibration data.
    int8-static    onnxruntime.quantization.quantize_static (QDQ, MinMax) calibrated on the first
                   `calibration_rows` rows of the golden inputs (a CalibrationDataReader).
    fp16           onnxruntime.transformers.float16 (inputs/outputs stay FP32): for GPU serving;
                   on a CPU machine it is verified numerically here, not for speed.

Only the op types in `QUANTIZED_OPS` present in the graph are quantized, minus `keep_float`;
everything else (embedding Gathers, LayerNormalization, Softmax, ...) stays in float.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from builders.build_inputs import BuildContext, ModelSource
from builders.errors import BadOption, BuilderError, ExportFailed, VerificationFailed
from builders.plan import Done, Step
from builders.specs import NUMPY_DTYPES, ExportSpec, Tolerance

METHODS = ("int8-dynamic", "int8-static", "fp16")
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv", "Attention")
DEFAULT_MAX_QUALITY_DROP = 0.01
DEFAULT_CALIBRATION_ROWS = 128

# How close a quantized graph must stay to its float source, element-wise and per row. INT8 moves
# every value a little: the element-wise bound only catches a broken graph, the per-row cosine
# (embedders) and arg-max agreement (classifiers) catch a damaged one; the golden-set quality gate
# is the real judge.
INT8_TOLERANCE = Tolerance(atol=0.1, rtol=0.1, min_cosine=0.95, argmax=False, min_argmax_agreement=0.9)
# Static INT8 (MinMax over golden rows) has a worse worst row: MiniLM's lowest golden cosine was
# 0.909 (recall@10 0.991 against 0.989 float), dynamic per-channel 0.989; measured here, one run.
INT8_STATIC_TOLERANCE = replace(INT8_TOLERANCE, min_cosine=0.9)
FP16_TOLERANCE = Tolerance(atol=2e-2, rtol=2e-2, min_cosine=0.999, argmax=False, min_argmax_agreement=0.98)


@dataclass(frozen=True)
class QuantizeOptions:
    """What `--quantize` asks for. `tolerance` None: INT8_TOLERANCE / FP16_TOLERANCE, with the
    source's own checks (cosine for embedders, arg-max for classifiers) switched on as the source has them."""

    method: str
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS  # int8-static only
    per_channel: bool = True  # per-channel weight scales (MiniLM dynamic: golden cosine 0.989 vs 0.949 per-tensor)
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI that saturate on 8-bit products
    keep_float: tuple[str, ...] = ()  # op types left in float on top of those never quantized
    max_quality_drop: float = DEFAULT_MAX_QUALITY_DROP  # absolute, on the golden-set headline metric
    tolerance: Tolerance | None = None
    random_batches: int = 4

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadOption(f"--quantize {self.method!r}: use one of {list(METHODS)}")
        if self.calibration_rows < 1:
            raise BadOption(f"--calibration-rows must be >= 1, got {self.calibration_rows}")
        if not 0 <= self.max_quality_drop <= 1:
            raise BadOption(f"--max-quality-drop must be within [0, 1], got {self.max_quality_drop}")
        unknown = [op for op in self.keep_float if not op or not op[0].isupper()]
        if unknown:
            raise BadOption(f"--keep-float takes ONNX op types such as MatMul, got {unknown}")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keep_float"] = list(self.keep_float)
        if self.method != "int8-static":
            data.pop("calibration_rows")
        return data

    def tolerance_for(self, source: Tolerance) -> Tolerance:
        defaults = {"fp16": FP16_TOLERANCE, "int8-static": INT8_STATIC_TOLERANCE, "int8-dynamic": INT8_TOLERANCE}
        base = self.tolerance or defaults[self.method]
        if self.tolerance is not None:
            return base
        return replace(
            base,
            min_cosine=base.min_cosine if source.min_cosine is not None else None,
            argmax=source.argmax,
        )


# -- the conversions --------------------------------------------------------------------------------
def _op_types(path: Path, keep_float: tuple[str, ...]) -> list[str]:
    import onnx

    present = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    return [op for op in QUANTIZED_OPS if op in present and op not in keep_float]


def calibration_batches(
    batches: list[dict[str, np.ndarray]], spec: ExportSpec, rows: int
) -> list[dict[str, np.ndarray]]:
    """The first `rows` rows of `batches` (the golden inputs), cut to size, as the graph's dtypes."""
    taken: list[dict[str, np.ndarray]] = []
    left = rows
    for batch in batches:
        if left <= 0:
            break
        size = int(next(iter(batch.values())).shape[0])
        n = min(size, left)
        taken.append({t.name: np.asarray(batch[t.name][:n]).astype(NUMPY_DTYPES[t.dtype]) for t in spec.inputs})
        left -= n
    return taken


def _reader(batches: list[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class GoldenReader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

        def rewind(self) -> None:
            self._batches = iter(batches)

    return GoldenReader()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer logs and prints; `--json` output must stay clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(
    src: Path,
    dst: Path,
    options: QuantizeOptions,
    *,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Write the `options.method` version of the float graph `src` to `dst`; return its settings.

    A missing package is a BuilderError naming it; a conversion onnxruntime refuses is ExportFailed.
    """
    from builders import onnx_export

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if options.method == "fp16":
        try:
            import onnxruntime.transformers.float16  # noqa: F401
        except ImportError as exc:
            raise BuilderError(
                "--quantize fp16 needs onnxruntime.transformers.float16 (part of the onnxruntime package), "
                f"which cannot be imported here: {exc}"
            ) from exc
        onnx_export.optimize_onnx(src, dst, fp16=True)
        return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}
    try:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as exc:
        raise BuilderError(f"--quantize {options.method} needs onnxruntime.quantization: {exc}") from exc
    ops = _op_types(src, options.keep_float)
    if not ops:
        raise ExportFailed(
            f"{src} has no op of {list(QUANTIZED_OPS)} left to quantize (keep_float {list(options.keep_float)})"
        )
    settings: dict[str, Any] = {"op_types": ops, "reduce_range": options.reduce_range}
    try:
        with _quiet():
            if options.method == "int8-dynamic":
                quantize_dynamic(
                    src,
                    dst,
                    op_types_to_quantize=ops,
                    per_channel=options.per_channel,
                    reduce_range=options.reduce_range,
                    weight_type=QuantType.QInt8,
                )
                settings |= {
                    "per_channel": options.per_channel,
                    "weight_type": "QInt8",
                    "activations": "QUInt8, per batch at run time",
                }
            else:
                if not calibration:
                    raise ExportFailed("int8-static needs calibration batches; the source has no golden inputs")
                quantize_static(
                    src,
                    dst,
                    _reader(calibration),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops,
                    per_channel=options.per_channel,
                    reduce_range=options.reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                )
                settings |= {
                    "format": "QDQ",
                    "calibration": "MinMax",
                    "calibration_rows": sum(int(next(iter(b.values())).shape[0]) for b in calibration),
                    "calibration_batches": len(calibration),
                    "per_channel": options.per_channel,
                    "weight_type": "QInt8",
                    "activation_type": "QUInt8",
                }
    except BuilderError:
        raise
    except Exception as exc:  # onnxruntime's quantizer raises many unrelated types
        raise ExportFailed(f"{options.method} quantization of {src} failed: {type(exc).__name__}: {exc}") from exc
    onnx_export.onnx_session(dst)  # a file onnxruntime cannot load is an ExportFailed naming it
    return settings


# -- the plan steps ---------------------------------------------------------------------------------
def quantize(
    ctx: BuildContext,
    *,
    source: ModelSource,
    spec: ExportSpec,
    served_onnx: Path,
    verification: dict[str, Any],
) -> Done:
    """Score the verified float graph, quantize it, and verify the result against it on random and golden inputs."""
    from builders import build_steps, onnx_export
    from builders.manifest import sha256_file

    options = ctx.options.quantize
    if options is None:
        raise BadOption("the quantize step runs only when --quantize is given")
    float_quality = build_steps.measure_quality(source, spec, served_onnx)
    calibration = (
        calibration_batches(source.golden_batches, spec, options.calibration_rows)
        if options.method == "int8-static"
        else None
    )
    out = ctx.workdir / f"model.{options.method}.onnx"
    settings = quantize_onnx(served_onnx, out, options, calibration=calibration)
    tol = options.tolerance_for(source.tolerance)
    subject = f"the {options.method} graph differs from its float source"
    figures: dict[str, Any] = {"method": options.method}
    entries: dict[str, Any] = {}
    for label, batches in (
        ("quantized_random", source.random_batches(options.random_batches, ctx.options.seed + 2)),
        ("quantized_golden", source.golden_batches),
    ):
        report = onnx_export.compare_onnx(served_onnx, out, batches, spec, tol, label=label)
        # Static INT8 clips at the ranges calibrated on the golden inputs: random inputs beyond them
        # differ by design, so for it the random figures are recorded, and golden ones enforced.
        enforced = not (options.method == "int8-static" and label == "quantized_random")
        if enforced:
            onnx_export.require_verified(report, subject=subject)
        figures[label.removeprefix("quantized_")] = report.as_dict() | {"enforced": enforced}
        entries[label] = report.as_dict() | {"tolerance": tol.as_dict(), "against": "float onnx", "enforced": enforced}
    record = {
        "method": options.method,
        "options": options.as_dict(),
        "settings": settings,
        "float_sha256": sha256_file(served_onnx),
        "float_bytes": served_onnx.stat().st_size,
        "bytes": out.stat().st_size,
        "float_quality": float_quality,
        "tolerance": tol.as_dict(),
        "verification": entries,
    }
    figures |= {"bytes": out.stat().st_size, "float_bytes": served_onnx.stat().st_size, "float_quality": float_quality}
    return Done(figures, {"served_onnx": out, "verification": verification | entries, "quantization": record})


def gate(float_quality: dict[str, Any], quality: dict[str, Any], max_drop: float, method: str) -> dict[str, Any]:
    """The quality gate's figures; VerificationFailed when the golden-set metric dropped more than `max_drop`.

    Every metric the builds measure (accuracy, recall@10, AUC) is higher-is-better. A source
    without a golden-set score (an intent model whose labels do not cover the golden intents) is
    gated on the numerical checks alone, and the figures say so.
    """
    if "value" not in float_quality or "value" not in quality:
        return {"passed": True, "scored": False, "reason": "no golden-set score; gated on numerical checks only"}
    metric = str(quality.get("metric", "value"))
    before, after = float(float_quality["value"]), float(quality["value"])
    drop = before - after
    figures = {
        "metric": metric,
        "float": before,
        "quantized": after,
        "drop": drop,
        "max_drop": max_drop,
        "passed": drop <= max_drop + 1e-12,
        "scored": True,
    }
    if not figures["passed"]:
        raise VerificationFailed(
            f"quality gate: {metric} of the {method} graph is {after:.4f} against {before:.4f} for its float "
            f"source, a drop of {drop:.4f} over the allowed {max_drop:g}; nothing published"
        )
    return figures


def quality_gate(ctx: BuildContext, *, quality: dict[str, Any], quantization: dict[str, Any]) -> Done:
    options = ctx.options.quantize
    if options is None:
        raise BadOption("the quality_gate step runs only when --quantize is given")
    figures = gate(quantization["float_quality"], quality, options.max_quality_drop, options.method)
    return Done(figures, {"quantization": quantization | {"quality": quality, "gate": figures}})


QUANTIZE = Step(
    "quantize",
    quantize,
    needs=("source", "spec", "served_onnx", "verification"),
    makes=("served_onnx", "verification", "quantization"),
)
QUALITY_GATE = Step("quality_gate", quality_gate, needs=("quality", "quantization"), makes=("quantization",))

__all__ = [
    "DEFAULT_MAX_QUALITY_DROP",
    "METHODS",
    "QUALITY_GATE",
    "QUANTIZE",
    "QuantizeOptions",
    "calibration_batches",
    "gate",
    "quantize_onnx",
]
