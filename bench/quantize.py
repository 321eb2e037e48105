"""Float ONNX vs INT8 dynamic vs INT8 static (builders.quantize) vs torch eager, side by side, in one run.

For the MiniLM embedder (the real all-MiniLM-L6-v2, exported as a build exports it), the example
query-intent classifier (builders.examples' `query_intent`, recipe "base", trained here in seconds)
and the example CTR ranker: onnxruntime CPU sessions with 1 and 2 intra-op threads (and the source
module in eval mode under torch.inference_mode with torch.set_num_threads matching), batches of 1,
8 and 32 rows of the golden inputs: rows/s (median of repeated timed windows), the ratio to float
ONNX, p50/p99 latency per batch, and each version's golden-set quality measured as the build
measures it (recall@10, accuracy, AUC).

With `--optimum-python /tmp/optimum-venv/bin/python` (a separate venv with optimum[onnxruntime]),
Hugging Face Optimum's own export + ORTQuantizer INT8 (avx512_vnni, dynamic, per-channel) of the same
MiniLM checkpoint is made in a subprocess there and timed here with the same session settings; its
graph outputs token states, so mean pooling + L2 normalisation run in numpy for its recall@10 (not timed).

    .venv/bin/python bench/quantize.py [--seconds 1.0] [--optimum-python PY] [--write-docs]

`--write-docs` replaces the last section of docs/benchmarks.md with the tables. The machine is a
noisy shared 2-core one: read the ratios, not the absolute rows/s, and rerun before trusting a
difference under ~10%.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builders import build_steps, onnx_export  # noqa: E402
from builders.build_inputs import ModelSource  # noqa: E402
from builders.quantize import (  # noqa: E402
    DEFAULT_MAX_QUALITY_DROP,
    QuantizeOptions,
    calibration_batches,
    quantize_onnx,
)
from builders.specs import NUMPY_DTYPES  # noqa: E402

BATCHES = (1, 8, 32)
THREADS = (1, 2)
METHODS = ("float", "int8-dynamic", "int8-static")
SECTION = "## Quantized versions: float vs INT8 dynamic vs INT8 static"
EMBEDDER_GOAL_RATIO, EMBEDDER_GOAL_DROP = 1.8, 0.005  # issue 13, MiniLM at batch 8

# Run in the Optimum venv (argv: checkpoint dir, output dir); prints the INT8 file's path.
OPTIMUM_SCRIPT = """
import sys
from pathlib import Path
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
source, out = Path(sys.argv[1]), Path(sys.argv[2])
model = ORTModelForFeatureExtraction.from_pretrained(source, export=True)
model.save_pretrained(out / "export")
quantizer = ORTQuantizer.from_pretrained(out / "export")
config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
quantizer.quantize(save_dir=out / "int8", quantization_config=config)
import optimum.version, onnxruntime
print("versions", optimum.version.__version__, onnxruntime.__version__)
print(next((out / "int8").glob("*.onnx")))
"""


OPTIMUM_NOTE = (
    "`optimum-int8` is Optimum {optimum} (onnxruntime {ort} in its own venv, /tmp/optimum-venv, torch 2.13.0+cpu): "
    "`ORTModelForFeatureExtraction.from_pretrained(<the same MiniLM folder>, export=True)`, then `ORTQuantizer` with "
    "`AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)`, made in a subprocess and timed here "
    "with the same session settings. Its graph outputs token states (and takes token_type_ids, fed zeros), so its "
    "recall@10 is scored after mean pooling + L2 normalisation in numpy (not in the timings); it also quantizes "
    "more op types than builders.quantize (hence the smaller file)"
)


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def feeds_for(source: ModelSource, rows: int) -> dict[str, np.ndarray]:
    """`rows` golden rows; text inputs trimmed to the longest real row, as the tokenizer pads them."""
    spec = source.spec
    pool = {t.name: np.concatenate([b[t.name] for b in source.golden_batches]) for t in spec.inputs}
    if "attention_mask" in pool:  # text: take rows of one batch, padded to their longest row
        first = source.golden_batches[1]
        mask = first["attention_mask"][:rows]
        length = int(mask.sum(axis=1).max())
        return {t.name: first[t.name][:rows, :length].astype(NUMPY_DTYPES[t.dtype]) for t in spec.inputs}
    return {t.name: pool[t.name][:rows].astype(NUMPY_DTYPES[t.dtype]) for t in spec.inputs}


def timed(call: Callable[[], Any], rows: int, seconds: float, windows: int = 3) -> dict[str, float]:
    """rows/s (median over `windows` timed windows) and p50/p99 latency (ms) of every call in them."""
    for _ in range(3):
        call()
    rates, latencies = [], []
    for _ in range(windows):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / windows:
            before = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - before)
            count += 1
        rates.append(count * rows / (time.perf_counter() - started))
    ms = np.asarray(latencies) * 1e3
    return {
        "rate": statistics.median(rates),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "calls": len(latencies),
    }


def versions(source: ModelSource, folder: Path, *, dynamo: bool) -> dict[str, Path]:
    float_path = onnx_export.export_onnx(
        source.module, source.spec, source.example, folder / "float.onnx", dynamo=dynamo
    )
    paths = {"float": float_path}
    for method in METHODS[1:]:
        options = QuantizeOptions(method)
        calibration = calibration_batches(source.golden_batches, source.spec, options.calibration_rows)
        paths[method] = folder / f"{method}.onnx"
        quantize_onnx(float_path, paths[method], options, calibration=calibration)
    return paths


def onnx_runner(path: Path, threads: int, source: ModelSource) -> Callable[[int], Callable[[], Any]]:
    sess = session(path, threads)

    def for_batch(rows: int) -> Callable[[], Any]:
        feeds = feeds_for(source, rows)
        return lambda: sess.run(None, feeds)

    return for_batch


def torch_runner(source: ModelSource, threads: int) -> Callable[[int], Callable[[], Any]]:
    import torch

    torch.set_num_threads(threads)
    module = source.module.eval()

    def for_batch(rows: int) -> Callable[[], Any]:
        feeds = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in feeds_for(source, rows).items()}

        def call() -> Any:
            with torch.inference_mode():
                return module(**feeds)

        return call

    return for_batch


def torch_quality(source: ModelSource) -> dict[str, Any]:
    import torch

    with torch.inference_mode():
        return source.quality(lambda batch: onnx_export.torch_outputs(source.module.eval(), batch, source.spec))


def optimum_feeds(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Optimum's BERT graph may also want token_type_ids: zeros, as the tokenizer gives one segment."""
    out = {}
    for item in sess.get_inputs():
        out[item.name] = feeds[item.name] if item.name in feeds else np.zeros_like(feeds["input_ids"])
    return out


def optimum_pooled(sess: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The sentence embedding from Optimum's graph: its own if it has one, else mean pooling + L2 norm."""
    names = [o.name for o in sess.get_outputs()]
    if "sentence_embedding" in names:
        return np.asarray(sess.run(["sentence_embedding"], optimum_feeds(sess, feeds))[0])
    states = np.asarray(sess.run([names[0]], optimum_feeds(sess, feeds))[0])
    mask = feeds["attention_mask"][..., None].astype(states.dtype)
    pooled = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def optimum_int8(python: str, checkpoint: Path, folder: Path) -> tuple[Path | None, str]:
    """Optimum's export + ORTQuantizer INT8 of `checkpoint`, made by `python` (its own venv)."""
    try:
        done = subprocess.run(
            [python, "-c", OPTIMUM_SCRIPT, str(checkpoint), str(folder)],
            capture_output=True,
            text=True,
            timeout=600,
            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if done.returncode != 0:
        return None, (done.stderr or done.stdout).strip().splitlines()[-1] if (done.stderr or done.stdout) else "failed"
    lines = done.stdout.strip().splitlines()
    found = next((line.split() for line in lines if line.startswith("versions")), ["versions", "?", "?"])
    return Path(lines[-1]), OPTIMUM_NOTE.format(optimum=found[1], ort=found[2])


def record(name: str, method: str, threads: int, quality: dict[str, Any], kb: float, figures: dict) -> dict:
    row = {"model": name, "method": method, "threads": threads, "kb": kb, "figures": figures}
    row.update(metric=quality.get("metric", "-"), quality=quality.get("value", float("nan")))
    print(
        f"{name} {method} threads={threads} {row['metric']}={row['quality']:.4f} "
        + " ".join(f"b{b}={f['rate']:.0f}/s p50={f['p50']:.2f}ms p99={f['p99']:.2f}ms" for b, f in figures.items()),
        file=sys.stderr,
        flush=True,
    )
    return row


def measure(
    name: str, source: ModelSource, paths: dict[str, Path], seconds: float, optimum: Path | None = None
) -> list[dict[str, Any]]:
    results = []
    for method, path in paths.items():
        quality = build_steps.measure_quality(source, source.spec, path)
        for threads in THREADS:
            runner = onnx_runner(path, threads, source)
            figures = {b: timed(runner(b), b, seconds) for b in BATCHES}
            results.append(record(name, method, threads, quality, path.stat().st_size / 1e3, figures))
    if optimum is not None:
        sess = session(optimum, 1)
        dtypes = {t.name: NUMPY_DTYPES[t.dtype] for t in source.spec.inputs}
        quality = source.quality(
            lambda batch: [optimum_pooled(sess, {k: np.asarray(batch[k]).astype(d) for k, d in dtypes.items()})]
        )
        for threads in THREADS:
            sess = session(optimum, threads)
            figures = {}
            for b in BATCHES:
                feeds = optimum_feeds(sess, feeds_for(source, b))
                figures[b] = timed(functools.partial(sess.run, None, feeds), b, seconds)
            results.append(record(name, "optimum-int8", threads, quality, optimum.stat().st_size / 1e3, figures))
    quality = torch_quality(source)
    for threads in THREADS:
        runner = torch_runner(source, threads)
        figures = {b: timed(runner(b), b, seconds) for b in BATCHES}
        results.append(record(name, "torch-eager", threads, quality, float("nan"), figures))
    return results


def table(results: list[dict[str, Any]], model: str) -> str:
    header = ["version", "threads", "quality", "KB"]
    header += [f"b{b} rows/s (x float)" for b in BATCHES] + [f"b{b} p50 / p99 ms" for b in BATCHES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [r for r in results if r["model"] == model]
    floats = {r["threads"]: r for r in rows if r["method"] == "float"}
    for r in sorted(rows, key=lambda r: r["threads"]):
        base = floats[r["threads"]]["figures"]
        kb = "-" if r["kb"] != r["kb"] else f"{r['kb']:.0f}"
        cells = [r["method"], str(r["threads"]), f"{r['metric']} {r['quality']:.4f}", kb]
        cells += [f"{r['figures'][b]['rate']:.0f} ({r['figures'][b]['rate'] / base[b]['rate']:.2f}x)" for b in BATCHES]
        cells += [f"{r['figures'][b]['p50']:.2f} / {r['figures'][b]['p99']:.2f}" for b in BATCHES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """The issue's goal: MiniLM INT8 >= 1.8x float ONNX at batch 8 with recall@10 within 0.005 of
    float; the intent classifier and ranker within their quality gate (max drop 0.01)."""
    out = []
    for r in results:
        if r["method"] in ("float", "torch-eager"):
            continue
        base = next(
            f for f in results if f["model"] == r["model"] and f["method"] == "float" and f["threads"] == r["threads"]
        )
        ratio = r["figures"][8]["rate"] / base["figures"][8]["rate"]
        drop = base["quality"] - r["quality"]
        if r["model"] == "minilm":
            met = ratio >= EMBEDDER_GOAL_RATIO and drop <= EMBEDDER_GOAL_DROP
            goal = f"speed {'met' if ratio >= EMBEDDER_GOAL_RATIO else 'not met'}, quality {'met' if drop <= EMBEDDER_GOAL_DROP else 'not met'}"
        else:
            met = drop <= DEFAULT_MAX_QUALITY_DROP
            goal = f"quality gate {'passed' if met else 'failed'}"
        out.append(
            f"- {r['model']} {r['method']}, {r['threads']} thread(s): x{ratio:.2f} at batch 8, "
            f"{r['metric']} drop {drop:+.4f}: **{goal}**"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per configuration")
    parser.add_argument("--write-docs", action="store_true", help="replace the last section of docs/benchmarks.md")
    parser.add_argument("--optimum-python", help="python of a venv with optimum[onnxruntime] (MiniLM Optimum INT8)")
    parser.add_argument("--no-ranker", action="store_true")
    parser.add_argument("--no-intent", action="store_true")
    args = parser.parse_args()
    started = time.time()
    from builders.text_models import inspect_checkpoint, minilm_dir, text_source

    results: list[dict[str, Any]] = []
    optimum_note = "not asked for (no --optimum-python)"
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as scratch:
        folder = Path(scratch)
        optimum = None
        if args.optimum_python:
            optimum, optimum_note = optimum_int8(args.optimum_python, minilm_dir(), folder / "optimum")
            print(f"optimum: {optimum} {optimum_note}", file=sys.stderr, flush=True)
        embedder = text_source(inspect_checkpoint(minilm_dir(), "embedder"))
        (folder / "minilm").mkdir()
        paths = versions(embedder, folder / "minilm", dynamo=False)
        results += measure("minilm", embedder, paths, args.seconds, optimum)
        if not args.no_intent:
            from builders.examples import intent_checkpoint
            from builders.intent_example import recipe_for

            checkpoint = intent_checkpoint(folder / "checkpoints", recipe_for("base"), "base")
            intent = text_source(inspect_checkpoint(checkpoint, "intent"))
            (folder / "intent").mkdir()
            results += measure("intent", intent, versions(intent, folder / "intent", dynamo=True), args.seconds)
        if not args.no_ranker:
            import torch

            from builders.ranker import ranker_source, train_example

            model, factory = train_example("good")
            weights = folder / "ranker.pt"
            torch.save(model.state_dict(), weights)
            ranker = ranker_source(factory, weights)
            (folder / "ranker").mkdir()
            results += measure("ranker", ranker, versions(ranker, folder / "ranker", dynamo=True), args.seconds)
    models = list(dict.fromkeys(r["model"] for r in results))
    tables = {m: table(results, m) for m in models}
    goal = verdict(results)
    for m in models:
        print(f"\n### {m}\n\n{tables[m]}")
    print("\n" + "\n".join(goal))
    elapsed = time.time() - started
    print(f"took {elapsed:.0f} s; optimum: {optimum_note}", file=sys.stderr)
    if args.write_docs:
        command = f".venv/bin/python bench/quantize.py --seconds {args.seconds:g}"
        if args.optimum_python:
            command += f" --optimum-python {args.optimum_python}"
        section = [
            SECTION + ", torch eager and Optimum (onnxruntime CPU)",
            "",
            f"Command: `{command} --write-docs` ({datetime.date.today().isoformat()}, {elapsed:.0f} s). "
            f"onnxruntime {__import__('onnxruntime').__version__}, torch {__import__('torch').__version__}, "
            "CPUExecutionProvider, `intra_op_num_threads` 1 or 2 (`inter_op_num_threads` 1); torch eager: the "
            "source module in eval mode under `torch.inference_mode()`, `torch.set_num_threads` 1 or 2.",
            "",
            "Versions made by `builders.quantize.quantize_onnx` with its defaults (MatMul/Gemm/Conv/Attention "
            "quantized, per-channel INT8 weights; static: QDQ, MinMax over the first 128 golden rows). "
            "Inputs: golden rows (text: one golden batch's rows, padded to their longest); rows/s is the "
            f"median of 3 timed windows of {args.seconds / 3:.2f} s; `x float` is the ratio to the float ONNX "
            "graph at the same threads and batch; p50/p99 are over every call in those windows (ms per batch; "
            "with fewer than ~100 calls p99 is close to the slowest call). Quality as the build measures it "
            "(MiniLM recall@10 on the golden set, intent accuracy on the golden queries, ranker AUC on 400 rows).",
            "",
            f"Optimum: {optimum_note}.",
            "",
            "**Caveat**: a noisy shared 2-core machine, one run; absolute rows/s move by 10-30% between runs, "
            "the ratios less. The 2-thread rows share the 2 cores with everything else running.",
            "",
        ]
        for m in models:
            section += [f"### {m}", "", tables[m], ""]
        section += [
            "Goal from issue 13 (MiniLM INT8 >= 1.8x float ONNX rows/s at batch 8 with recall@10 within 0.005 "
            f"of float; intent classifier and ranker within the quality gate, max drop {DEFAULT_MAX_QUALITY_DROP}):",
            "",
            *goal,
            "",
        ]
        docs = ROOT / "docs" / "benchmarks.md"
        text = docs.read_text()
        at = text.find(SECTION)
        text = (text[:at] if at >= 0 else text.rstrip("\n") + "\n\n") + "\n".join(section)
        docs.write_text(text)


if __name__ == "__main__":
    main()
