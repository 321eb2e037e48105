"""`shepherd build ranker|intent|embedder|examples`: checkpoints to verified versions in the model repository.

Each build runs the steps of builders.pipeline; a progress line per step goes to stderr, a summary
table to stdout at the end, and `--json` prints only the machine-readable results. The exit code
is the failing error's `exit_code` (0 when every build succeeded); a failed build publishes nothing.
Each failed build also prints one `error:` line on stderr, with `--json` too (stdout stays JSON).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from builders.errors import BadOption, BuilderError
from builders.pipeline import BuildOptions, BuildResult, Status, StepResult
from builders.repository import ModelRepository
from builders.tensorrt import EngineOptions
from builders.triton_config import BatchingOptions, InstanceOptions
from control_plane.cli.output import console, error_console, print_error, print_json, print_table

app = typer.Typer(
    help="Build verified ONNX (and TensorRT) versions into the Triton model repository.", no_args_is_help=True
)

Repo = Annotated[Path, typer.Option("--repo", help="The Triton model repository to publish into.")]
Name = Annotated[str | None, typer.Option("--name", help="Triton model name (default per kind).")]
Formats = Annotated[str, typer.Option("--formats", help="Comma-separated: onnx, tensorrt.")]
Opset = Annotated[int, typer.Option("--opset", help="ONNX opset of the export.")]
MaxBatch = Annotated[int, typer.Option("--max-batch-size", help="Triton max_batch_size (0: no batching).")]
NoDynamic = Annotated[bool, typer.Option("--no-dynamic-batching", help="Leave dynamic batching off.")]
Preferred = Annotated[str, typer.Option("--preferred-batch-sizes", help="Comma-separated, e.g. 8,16.")]
QueueDelay = Annotated[int, typer.Option("--max-queue-delay-us", help="Dynamic batching max queue delay.")]
Instances = Annotated[int, typer.Option("--instances", help="Model instances (instance_group count).")]
Kind = Annotated[str, typer.Option("--instance-kind", help="cpu, gpu or auto (KIND_CPU, KIND_GPU, KIND_AUTO).")]
Fp16 = Annotated[bool, typer.Option("--fp16", help="FP16 ONNX (verified again) and FP16 TensorRT engine.")]
Optimize = Annotated[bool, typer.Option("--optimize", help="onnxruntime graph optimisation (verified again).")]
MaxSeq = Annotated[int, typer.Option("--max-seq", help="TensorRT profile: longest sequence.")]
Calibration = Annotated[int, typer.Option("--int8-calibration-batches", help="TensorRT INT8 on N golden batches.")]
TimingCache = Annotated[Path | None, typer.Option("--timing-cache", help="TensorRT timing cache file.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON results only (for scripts).")]
Quantize = Annotated[
    str | None,
    typer.Option("--quantize", help="int8-dynamic, int8-static or fp16: a compressed ONNX behind a quality gate."),
]
CalibrationRows = Annotated[int, typer.Option("--calibration-rows", help="int8-static: golden rows to calibrate on.")]
MaxQualityDrop = Annotated[
    float, typer.Option("--max-quality-drop", help="--quantize: largest golden-metric drop allowed (absolute).")
]
KeepFloat = Annotated[str, typer.Option("--keep-float", help="--quantize: op types left in float, e.g. Gemm.")]


def model_name(name: str | None, default: str) -> str:
    """`--name` as given, or the kind's default when it was NOT given (None).

    Why not `name or default`: an explicitly empty `--name ''` must be refused as InvalidModelName
    (exit 31) by BuildOptions, not silently replaced by the default model name.
    """
    return default if name is None else name


def _csv_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise BadOption(f"{what} must be comma-separated integers, got {text!r}") from exc


def make_options(
    name: str,
    *,
    formats: str = "onnx",
    opset: int = 17,
    max_batch_size: int = 32,
    no_dynamic_batching: bool = False,
    preferred_batch_sizes: str = "",
    max_queue_delay_us: int = 1000,
    instances: int = 1,
    instance_kind: str = "cpu",
    fp16: bool = False,
    optimize: bool = False,
    max_seq: int = 128,
    int8_calibration_batches: int = 0,
    timing_cache: Path | None = None,
    quantize: str | None = None,
    calibration_rows: int = 128,
    max_quality_drop: float = 0.01,
    keep_float: str = "",
) -> BuildOptions:
    """The command line's options as BuildOptions (bad values raise BadOption, exit code 2)."""
    from builders.quantize import QuantizeOptions

    quantized = (
        QuantizeOptions(
            quantize.strip().lower(),
            calibration_rows=calibration_rows,
            max_quality_drop=max_quality_drop,
            keep_float=tuple(op.strip() for op in keep_float.split(",") if op.strip()),
        )
        if quantize
        else None
    )
    kind = instance_kind.upper()
    kind = kind if kind.startswith("KIND_") else f"KIND_{kind}"
    wanted = tuple(part.strip().lower() for part in formats.split(",") if part.strip())
    return BuildOptions(
        name=name,
        formats=wanted,
        opset=opset,
        batching=BatchingOptions(
            max_batch_size=max_batch_size,
            dynamic_batching=not no_dynamic_batching,
            preferred_batch_sizes=_csv_ints(preferred_batch_sizes, "--preferred-batch-sizes"),
            max_queue_delay_us=max_queue_delay_us,
        ),
        instances=InstanceOptions(count=instances, kind=kind),
        optimize=optimize,
        fp16=fp16 and "onnx" in wanted,
        engine=EngineOptions(
            fp16=fp16,
            int8=int8_calibration_batches > 0,
            max_batch=max(1, max_batch_size),
            max_seq=max_seq,
            timing_cache=str(timing_cache) if timing_cache else None,
        ),
        calibration_batches=int8_calibration_batches,
        quantize=quantized,
    )


class _StepProgress:
    """One spinner line per step on stderr, turned into its status and time when the step ends."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.tasks: dict[str, Any] = {}

    def __call__(self, step: str, result: StepResult | None) -> None:
        self.progress.start()  # on the first step (idempotent)
        if result is None:
            self.tasks[step] = self.progress.add_task(f"{self.label}: {step}", total=1)
            return
        colour = {Status.OK: "green", Status.FAIL: "red", Status.SKIPPED: "dim"}[result.status]
        text = f"{self.label}: {step} [{colour}]{result.status}[/]"
        if step not in self.tasks:
            self.tasks[step] = self.progress.add_task(text, total=1)
        self.progress.update(self.tasks[step], completed=1, description=text)


def _short(figures: dict[str, Any]) -> str:
    """The figures a person looks at first: errors, quality, versions."""
    if "outputs" in figures:
        parts = [
            f"{name}: max abs {check['max_abs_error']:.2g}"
            + (f", cos {check['min_cosine']:.5f}" if check.get("min_cosine") is not None else "")
            + (f", argmax {check['argmax_agreement']:.3f}" if check.get("argmax_agreement") is not None else "")
            for name, check in figures["outputs"].items()
        ]
        return f"{figures.get('rows')} rows; " + "; ".join(parts)
    if "max_drop" in figures:
        return (
            f"{figures['metric']} {figures['quantized']:.4f} vs float {figures['float']:.4f} "
            f"(drop {figures['drop']:.4f}, max {figures['max_drop']:g})"
        )
    if "metric" in figures:
        return f"{figures['metric']} {figures['value']:.4f} on {figures.get('rows')} rows"
    if "versions" in figures:
        return ", ".join(f"{model} v{version}" for model, version in figures["versions"].items())
    if "method" in figures and "float_bytes" in figures:
        return f"{figures['method']}: {figures['bytes']} bytes (float {figures['float_bytes']})"
    if "bytes" in figures:
        return f"{figures['bytes']} bytes" + (" (fp16)" if figures.get("fp16") else "")
    if "factory" in figures:
        return str(figures["factory"])
    if "published" in figures:
        return str(figures["published"])
    return ""


def _exit(code: int) -> None:
    """End with `code`. SystemExit, not typer.Exit: `control_plane.cli.main` runs click with
    standalone_mode=False, where click turns typer.Exit into a return value that main ignores."""
    raise SystemExit(code)


def _report(results: list[BuildResult], as_json: bool) -> None:
    if as_json:
        print_json({"ok": all(r.ok for r in results), "builds": [r.as_dict() for r in results]})
    else:
        rows = [
            (r.model, step.name, str(step.status), f"{step.seconds:.2f}", step.message or _short(step.figures))
            for r in results
            for step in r.steps
        ]
        print_table("Build", ["model", "step", "status", "seconds", "figures"], rows)
        for r in results:
            if r.ok:
                where = ", ".join(f"{p.model} version {p.version}" for p in r.published) or "nothing"
                console.print(f"[green]{r.model}[/]: published {where}")
    failed = [r for r in results if not r.ok]
    for r in failed:  # on stderr with --json too: stdout stays JSON, the reason still reaches a log
        print_error(f"{r.model}: {r.error}")
    if failed:
        _exit(failed[0].exit_code)


def _run(as_json: bool, label: str, build: Callable[[Callable[[str, StepResult | None], None] | None], Any]) -> None:
    """Run one build function (which takes a progress callback) and report; errors keep their exit codes."""
    try:
        if as_json:
            # Whatever a build prints (a library's progress, a trainer's log) must not break the JSON.
            with contextlib.redirect_stdout(sys.stderr):
                outcome = build(None)
        else:
            progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                TimeElapsedColumn(),
                console=error_console,
                transient=False,
            )
            try:
                outcome = build(_StepProgress(progress, label))
            finally:
                if progress.live.is_started:  # an error before the first step stays one line
                    progress.stop()
    except BuilderError as exc:  # raised before any step ran: bad options, a bad repository
        if as_json:
            print_json({"ok": False, "error": str(exc), "error_type": type(exc).__name__, "exit_code": exc.exit_code})
        print_error(str(exc))
        _exit(exc.exit_code)
    _report(list(outcome) if isinstance(outcome, list | tuple) else [outcome], as_json)


@app.command()
def ranker(
    factory: Annotated[str, typer.Option("--factory", help="package.module:function returning the nn.Module.")],
    weights: Annotated[Path, typer.Option("--weights", help="State dict file (torch.save of state_dict()).")],
    golden: Annotated[Path | None, typer.Option("--golden", help="Golden set CSV (default: the shipped one).")] = None,
    repo: Repo = Path("model_repository"),
    name: Name = None,
    formats: Formats = "onnx",
    opset: Opset = 17,
    max_batch_size: MaxBatch = 32,
    no_dynamic_batching: NoDynamic = False,
    preferred_batch_sizes: Preferred = "",
    max_queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    instance_kind: Kind = "cpu",
    fp16: Fp16 = False,
    optimize: Optimize = False,
    max_seq: MaxSeq = 128,
    int8_calibration_batches: Calibration = 0,
    timing_cache: TimingCache = None,
    quantize: Quantize = None,
    calibration_rows: CalibrationRows = 128,
    max_quality_drop: MaxQualityDrop = 0.01,
    keep_float: KeepFloat = "",
    as_json: Json = False,
) -> None:
    """A PyTorch CTR ranker (factory + state dict) -> a verified ONNX version of `--name` (default ctr_ranker)."""
    from builders.ranker import GOLDEN_CSV, build_ranker

    common = _common(locals())
    model = model_name(name, "ctr_ranker")
    _run(
        as_json,
        model,
        lambda progress: build_ranker(
            ModelRepository(repo),
            factory=factory,
            weights=weights,
            options=make_options(model, **common),
            golden=golden or GOLDEN_CSV,
            progress=progress,
        ),
    )


_COMMON = (
    "formats",
    "opset",
    "max_batch_size",
    "no_dynamic_batching",
    "preferred_batch_sizes",
    "max_queue_delay_us",
    "instances",
    "instance_kind",
    "fp16",
    "optimize",
    "max_seq",
    "int8_calibration_batches",
    "timing_cache",
    "quantize",
    "calibration_rows",
    "max_quality_drop",
    "keep_float",
)


def _common(values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in _COMMON}


def _text_command(kind: str, default_name: str) -> Callable[..., None]:
    def command(
        checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Local checkpoint directory.")],
        repo: Repo = Path("model_repository"),
        name: Name = None,
        formats: Formats = "onnx",
        opset: Opset = 17,
        max_batch_size: MaxBatch = 32,
        no_dynamic_batching: NoDynamic = False,
        preferred_batch_sizes: Preferred = "",
        max_queue_delay_us: QueueDelay = 1000,
        instances: Instances = 1,
        instance_kind: Kind = "cpu",
        fp16: Fp16 = False,
        optimize: Optimize = False,
        max_seq: MaxSeq = 128,
        int8_calibration_batches: Calibration = 0,
        timing_cache: TimingCache = None,
        quantize: Quantize = None,
        calibration_rows: CalibrationRows = 128,
        max_quality_drop: MaxQualityDrop = 0.01,
        keep_float: KeepFloat = "",
        as_json: Json = False,
    ) -> None:
        from builders import text_models

        common = _common(locals())
        build = text_models.build_intent if kind == "intent" else text_models.build_embedder
        model = model_name(name, default_name)
        _run(
            as_json,
            model,
            lambda progress: build(ModelRepository(repo), checkpoint, make_options(model, **common), progress=progress),
        )

    command.__doc__ = {
        "intent": "A Hugging Face sequence-classification checkpoint -> intent logits, tokenizer and ensemble.",
        "embedder": "A Hugging Face / sentence-transformers checkpoint -> embeddings, tokenizer and ensemble.",
    }[kind]
    return command


app.command("intent")(_text_command("intent", "query_intent"))
app.command("embedder")(_text_command("embedder", "product_embedder"))


@app.command()
def examples(repo: Repo = Path("model_repository"), as_json: Json = False) -> None:
    """Build the three example models (embedder from MiniLM, a trained intent classifier and ranker)."""
    from builders.examples import build_examples

    _run(as_json, "examples", lambda progress: build_examples(ModelRepository(repo), progress=progress))


@app.command()
def variant(
    model: Annotated[str, typer.Argument(help="query_intent or ctr_ranker.")],
    which: Annotated[str, typer.Argument(metavar="VARIANT", help="retrained, slow or damaged.")],
    repo: Repo = Path("model_repository"),
    as_json: Json = False,
) -> None:
    """A new version of an example model from an honest variant (for demos and control-plane tests)."""
    from builders.examples import build_variant

    _run(as_json, model, lambda progress: build_variant(ModelRepository(repo), model, which, progress=progress))
