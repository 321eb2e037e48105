"""Export a PyTorch module to ONNX and prove the export computes what the module computes.

Why verification lives beside the export: an ONNX file that loads is not an ONNX file that is
right (a traced branch, a dtype cast, an FP16 overflow). Every export is run in onnxruntime and in
PyTorch eager on the same batches (random inputs and the golden set, the caller passes both); the
figures go into the manifest and a build over tolerance stops before anything is published.

Calling convention: the module is called with keyword arguments named after `spec.inputs`
(`module(**example)`), so a forward(input_ids, attention_mask) or forward(categorical, dense)
works unchanged. Its result may be a tensor, a tuple/list (outputs in `spec.outputs` order) or a
mapping such as a Hugging Face ModelOutput (looked up by the names in `spec.outputs`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from builders.errors import ExportFailed, VerificationFailed
from builders.specs import NUMPY_DTYPES, ExportSpec, TensorSpec, Tolerance

__all__ = ["NUMPY_DTYPES", "ExportSpec", "TensorSpec", "Tolerance"]  # re-exported: they used to live here

# Triton dtype names -> torch
TORCH_DTYPES: dict[str, torch.dtype] = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "FP64": torch.float64,
    "INT64": torch.int64,
    "INT32": torch.int32,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


def _dynamic_axes(spec: ExportSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for tensor in (*spec.inputs, *spec.outputs):
        entry = {0: "batch"}
        for index, dim in enumerate(tensor.dims, start=1):
            if dim == -1:
                entry[index] = f"{tensor.name}_dim{index}"
        axes[tensor.name] = entry
    return axes


def _dynamic_shapes(spec: ExportSpec) -> dict[str, dict[int, Any]]:
    dynamic = torch.export.Dim.DYNAMIC
    shapes: dict[str, dict[int, Any]] = {}
    for tensor in spec.inputs:
        entry: dict[int, Any] = {0: dynamic}
        for index, dim in enumerate(tensor.dims, start=1):
            if dim == -1:
                entry[index] = dynamic
        shapes[tensor.name] = entry
    return shapes


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter prints progress to stdout; `--json` output must stay clean, so send it to stderr."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    spec: ExportSpec,
    example: dict[str, torch.Tensor],
    path: Path,
    *,
    dynamo: bool = True,
) -> Path:
    """Export `module` to one self-contained ONNX file at `path` (weights inside, no external data).

    Axis 0 of every input and output and every -1 dim become dynamic axes. The module is put in
    eval mode and called as `module(**example)` without gradients. Use an example batch of at
    least 2 rows so the exporter does not specialise the batch axis to 1. `dynamo=False` selects
    the TorchScript exporter for modules the dynamo exporter cannot trace.

    Example:
        spec = ExportSpec(inputs=(TensorSpec("x", "FP32", (4,)),), outputs=(TensorSpec("y", "FP32", (4,)),))
        export_onnx(model, spec, {"x": torch.randn(2, 4)}, Path("model.onnx"))
    """
    missing = [name for name in spec.input_names if name not in example]
    if missing:
        raise ExportFailed(f"example has no tensor for input(s) {missing}; it has {sorted(example)}")
    path = Path(path)
    module.eval()
    kwargs = {name: example[name] for name in spec.input_names}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), _quiet():
            if dynamo:
                program = torch.onnx.export(
                    module,
                    (),
                    kwargs=kwargs,
                    input_names=spec.input_names,
                    output_names=spec.output_names,
                    opset_version=spec.opset,
                    dynamic_shapes=_dynamic_shapes(spec),
                    dynamo=True,
                    verbose=False,
                )
                if program is None:
                    raise ExportFailed("torch.onnx.export returned no program")
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(
                    module,
                    (),
                    str(path),
                    kwargs=kwargs,
                    input_names=spec.input_names,
                    output_names=spec.output_names,
                    opset_version=spec.opset,
                    dynamic_axes=_dynamic_axes(spec),
                    dynamo=False,
                )
    except ExportFailed:
        raise
    except Exception as exc:  # the exporters raise many unrelated types; name the cause once
        raise ExportFailed(f"ONNX export of {type(module).__name__} failed: {type(exc).__name__}: {exc}") from exc
    _check_graph(path, spec)
    return path


def _check_graph(path: Path, spec: ExportSpec) -> None:
    """The graph must expose exactly the names the Triton config will declare."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportFailed(f"exported ONNX file {path} does not check: {exc}") from exc
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != spec.input_names or outputs != spec.output_names:
        raise ExportFailed(
            f"exported graph has inputs {inputs} and outputs {outputs}; "
            f"the spec asks for {spec.input_names} and {spec.output_names}"
        )


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    max_rel_error: float
    min_cosine: float | None
    argmax_agreement: float | None
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class VerificationReport:
    checks: tuple[OutputCheck, ...]
    batches: int
    rows: int
    passed: bool
    label: str = ""  # e.g. "random" or "golden": which inputs these figures are for

    def as_dict(self) -> dict[str, Any]:
        """The manifest's "verification" entry (or one part of it)."""
        return {
            "label": self.label,
            "passed": self.passed,
            "batches": self.batches,
            "rows": self.rows,
            "outputs": {check.name: {k: v for k, v in asdict(check).items() if k != "name"} for check in self.checks},
        }

    def failures(self) -> list[OutputCheck]:
        return [check for check in self.checks if not check.passed]


def torch_outputs(module: torch.nn.Module, batch: Mapping[str, np.ndarray], spec: ExportSpec) -> list[np.ndarray]:
    """Run the module in eager mode on numpy inputs; outputs in `spec.outputs` order."""
    feeds = {t.name: torch.from_numpy(np.ascontiguousarray(batch[t.name])) for t in spec.inputs}
    with torch.no_grad():
        result = module(**feeds)
    return [value.detach().cpu().numpy() for value in _as_list(result, spec)]


def _as_list(result: Any, spec: ExportSpec) -> list[torch.Tensor]:
    names = spec.output_names
    if isinstance(result, torch.Tensor):
        values = [result]
    elif isinstance(result, Mapping) or hasattr(result, "keys"):
        missing = [name for name in names if name not in result]
        values = [result[name] for name in names] if not missing else list(result.values())
    elif isinstance(result, Sequence):
        values = list(result)
    else:
        raise ExportFailed(f"module returned {type(result).__name__}; expected a tensor, a tuple or a mapping")
    if len(values) < len(names):
        raise ExportFailed(f"module returned {len(values)} output(s); the spec names {len(names)}: {names}")
    return values[: len(names)]


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session of `path`; a file onnxruntime cannot load is an ExportFailed naming it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types, all plain Exception subclasses
        raise ExportFailed(f"onnxruntime cannot load {path}: {type(exc).__name__}: {exc}") from exc


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    dots = np.sum(a2 * b2, axis=1)
    # Two zero rows are identical; one zero row against a non-zero one is maximally wrong.
    same_zero = (norms == 0) & np.all(a2 == b2, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same_zero, 1.0, 0.0))


@dataclass
class _Accumulator:
    max_abs: float = 0.0
    max_rel: float = 0.0
    within: bool = True
    min_cos: float = 1.0
    agree: int = 0
    rows: int = 0
    shape_error: str = ""


def verify_onnx(
    module: torch.nn.Module,
    onnx_path: Path,
    batches: Iterable[Mapping[str, np.ndarray]],
    spec: ExportSpec,
    tolerance: Tolerance,
    *,
    label: str = "",
) -> VerificationReport:
    """Compare onnxruntime with PyTorch eager on every batch; return the figures per output.

    Nothing is raised for a mismatch (a failure is a status): call `require_verified` to stop.
    """
    module.eval()
    session = onnx_session(onnx_path)
    return _compare(
        batches,
        spec,
        tolerance,
        label=label,
        subject=str(onnx_path),
        outputs=lambda feeds, where: _both_outputs(module, session, feeds, spec, where),
    )


def compare_onnx(
    reference: Path,
    candidate: Path,
    batches: Iterable[Mapping[str, np.ndarray]],
    spec: ExportSpec,
    tolerance: Tolerance,
    *,
    label: str = "",
) -> VerificationReport:
    """Compare two ONNX graphs of one spec in onnxruntime (e.g. a quantized graph against its float
    source), with the figures and pass/fail rules of `verify_onnx`; `reference` plays PyTorch's part."""
    want_session, have_session = onnx_session(reference), onnx_session(candidate)

    def outputs(feeds: dict[str, np.ndarray], where: str) -> tuple[list[Any], list[Any]]:
        try:
            return want_session.run(spec.output_names, feeds), have_session.run(spec.output_names, feeds)
        except Exception as exc:  # onnxruntime's own pybind error types
            raise VerificationFailed(f"onnxruntime raised on {where}: {type(exc).__name__}: {exc}") from exc

    return _compare(batches, spec, tolerance, label=label, subject=str(candidate), outputs=outputs)


def _compare(
    batches: Iterable[Mapping[str, np.ndarray]],
    spec: ExportSpec,
    tolerance: Tolerance,
    *,
    label: str,
    subject: str,
    outputs: Callable[[dict[str, np.ndarray], str], tuple[Sequence[Any], Sequence[Any]]],
) -> VerificationReport:
    """The figures of every output over every batch: `outputs(feeds, where)` gives (expected, got)."""
    acc = {name: _Accumulator() for name in spec.output_names}
    batch_count = rows = 0
    for batch in batches:
        batch_count += 1
        feeds = {t.name: np.ascontiguousarray(batch[t.name]).astype(NUMPY_DTYPES[t.dtype]) for t in spec.inputs}
        rows += next(iter(feeds.values())).shape[0]
        expected, got = outputs(feeds, f"batch {batch_count} of {label or subject}")
        for name, want, have in zip(spec.output_names, expected, got, strict=True):
            _accumulate(acc[name], np.asarray(want), np.asarray(have), tolerance)
    if batch_count == 0:
        raise VerificationFailed(f"no batches to verify {subject} on ({label or 'unlabelled'})")
    checks = tuple(_finish(name, acc[name], tolerance) for name in spec.output_names)
    return VerificationReport(
        checks=checks, batches=batch_count, rows=rows, passed=all(c.passed for c in checks), label=label
    )


def _both_outputs(
    module: torch.nn.Module, session: Any, feeds: dict[str, np.ndarray], spec: ExportSpec, where: str
) -> tuple[list[np.ndarray], list[Any]]:
    """PyTorch's and onnxruntime's outputs on one batch; either side raising cannot be verified."""
    try:
        expected = torch_outputs(module, feeds, spec)
    except ExportFailed:
        raise
    except Exception as exc:  # whatever the user's module raises on these inputs
        raise VerificationFailed(f"PyTorch raised on {where}: {type(exc).__name__}: {exc}") from exc
    try:
        got = session.run(spec.output_names, feeds)
    except Exception as exc:  # onnxruntime's own pybind error types
        raise VerificationFailed(f"onnxruntime raised on {where}: {type(exc).__name__}: {exc}") from exc
    return expected, got


def _accumulate(acc: _Accumulator, want: np.ndarray, have: np.ndarray, tolerance: Tolerance) -> None:
    if want.shape != have.shape:
        acc.shape_error = f"shape {have.shape} from onnxruntime, {want.shape} from PyTorch"
        acc.within = False
        return
    if want.size == 0:
        return
    w = want.astype(np.float64)
    h = have.astype(np.float64)
    diff = np.abs(h - w)
    if not np.all(np.isfinite(h) == np.isfinite(w)):
        acc.within = False
    diff = np.where(np.isfinite(diff), diff, 0.0)
    acc.max_abs = max(acc.max_abs, float(diff.max()))
    acc.max_rel = max(acc.max_rel, float((diff / np.maximum(np.abs(w), 1e-12)).max()))
    acc.within = acc.within and bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(w)))
    if tolerance.min_cosine is not None and w.ndim >= 1:
        acc.min_cos = min(acc.min_cos, float(_cosines(h, w).min()))
    if tolerance.argmax and w.ndim >= 2:
        acc.agree += int(np.sum(np.argmax(h, axis=-1).reshape(-1) == np.argmax(w, axis=-1).reshape(-1)))
        acc.rows += int(np.prod(w.shape[:-1]))


def _finish(name: str, acc: _Accumulator, tolerance: Tolerance) -> OutputCheck:
    reasons = []
    if acc.shape_error:
        reasons.append(acc.shape_error)
    elif not acc.within:
        reasons.append(f"max abs error {acc.max_abs:.3g} over atol {tolerance.atol:g} + rtol {tolerance.rtol:g}")
    cosine = acc.min_cos if tolerance.min_cosine is not None else None
    if cosine is not None and tolerance.min_cosine is not None and cosine < tolerance.min_cosine:
        reasons.append(f"min cosine {cosine:.6f} under {tolerance.min_cosine}")
    agreement = (acc.agree / acc.rows if acc.rows else 1.0) if tolerance.argmax else None
    if agreement is not None and agreement < tolerance.min_argmax_agreement:
        reasons.append(f"arg-max agreement {agreement:.4f} under {tolerance.min_argmax_agreement}")
    return OutputCheck(
        name=name,
        max_abs_error=acc.max_abs,
        max_rel_error=acc.max_rel,
        min_cosine=cosine,
        argmax_agreement=agreement,
        passed=not reasons,
        reason="; ".join(reasons),
    )


def require_verified(report: VerificationReport, *, subject: str = "ONNX export differs from PyTorch") -> None:
    """Raise VerificationFailed naming every failing output with its figures (`subject` starts the message)."""
    failures = report.failures()
    if not failures:
        return
    where = f" on {report.label} inputs" if report.label else ""
    details = "; ".join(
        f"{check.name}: {check.reason} (max abs {check.max_abs_error:.3g}, max rel {check.max_rel_error:.3g}"
        + (f", min cosine {check.min_cosine:.6f}" if check.min_cosine is not None else "")
        + (f", arg-max agreement {check.argmax_agreement:.4f}" if check.argmax_agreement is not None else "")
        + ")"
        for check in failures
    )
    raise VerificationFailed(f"{subject}{where} ({report.batches} batches, {report.rows} rows): {details}")


def optimize_onnx(src: Path, dst: Path, *, fp16: bool = False) -> Path:
    """Write an optimised copy of `src` to `dst`: onnxruntime's offline graph optimisation, then FP16.

    Why EXTENDED and not ALL: the ALL level adds layout changes tied to the machine that runs the
    optimisation, and the file is served elsewhere. FP16 uses onnxruntime's own float16 converter
    (no onnxconverter-common); inputs and outputs stay FP32 so the Triton config does not change.
    The caller verifies the result exactly as it verified the export.
    """
    import onnx
    import onnxruntime as ort

    src, dst = Path(src), Path(dst)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        source = src
        if fp16:
            # Convert first, then let onnxruntime optimise and write the graph: the converter
            # appends its input casts at the end of the node list, onnxruntime re-sorts them.
            from onnxruntime.transformers.float16 import convert_float_to_float16

            with _quiet(), contextlib.redirect_stderr(io.StringIO()):
                half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
            source = dst.with_name(dst.name + ".fp16-unsorted")
            onnx.save(half, str(source))
        try:
            ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        finally:
            if source != src:
                source.unlink(missing_ok=True)
        onnx.checker.check_model(onnx.load(str(dst)))
    except Exception as exc:
        raise ExportFailed(f"optimising {src} (fp16={fp16}) failed: {type(exc).__name__}: {exc}") from exc
    return dst
