"""Issue 3, in process: eager PyTorch against ONNX Runtime on the same weights and golden inputs.

Why: the builders export every model to ONNX on the claim that it serves faster than the eager
PyTorch it came from; this measures that claim per model and batch size, side by side in one run,
with the same thread count for both runtimes (torch.set_num_threads / intra_op_num_threads).

    .venv/bin/python bench/inproc.py [--repo model_repository] [--threads 1] [--seconds 1.0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnxruntime as ort
import torch

from bench.common import Spread, met, table, time_calls, write_result
from bench.examples_repo import ensure_examples, example, rows, torch_module
from builders.examples import EMBEDDER, INTENT, RANKER

BATCHES = (1, 8, 32)
TARGET_RATIO = 1.3  # ORT throughput / eager PyTorch throughput, embedder at batch 8


def measure(name: str, call: Any, batch: int, seconds: float, repeats: int) -> dict[str, Any]:
    runs = [time_calls(call, rows_per_call=batch, seconds=seconds) for _ in range(repeats)]
    return {
        "p50_ms": Spread.of([r.p50 for r in runs]),
        "p99_ms": Spread.of([r.p99 for r in runs]),
        "rows_per_s": Spread.of([r.rows_per_s for r in runs]),
        "calls": sum(len(r.latencies_ms) for r in runs),
    }


def bench_model(repo: Any, name: str, *, threads: int, seconds: float, repeats: int) -> list[dict[str, Any]]:
    item = example(repo, name)
    module = torch_module(repo, item).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(item.onnx), sess_options=options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    results = []
    for batch in BATCHES:
        feeds = rows(item.inputs, batch)
        tensors = {key: torch.from_numpy(value) for key, value in feeds.items()}

        def eager(tensors: dict[str, torch.Tensor] = tensors) -> Any:
            with torch.inference_mode():
                return module(**tensors)

        def onnx(feeds: dict[str, Any] = feeds) -> Any:
            return session.run(outputs, feeds)

        # Interleave the two runtimes' repeats so drift on the shared machine hits both alike.
        torch_runs, ort_runs = [], []
        for _ in range(repeats):
            torch_runs.append(measure(name, eager, batch, seconds, 1))
            ort_runs.append(measure(name, onnx, batch, seconds, 1))
        pt = {key: Spread.of([r[key].median for r in torch_runs]) for key in ("p50_ms", "p99_ms", "rows_per_s")}
        ox = {key: Spread.of([r[key].median for r in ort_runs]) for key in ("p50_ms", "p99_ms", "rows_per_s")}
        ratios = Spread.of(
            [o["rows_per_s"].median / t["rows_per_s"].median for t, o in zip(torch_runs, ort_runs, strict=True)]
        )
        width = next(iter(feeds.values())).shape[1] if "attention_mask" in feeds else None
        results.append({"model": name, "batch": batch, "tokens": width, "torch": pt, "ort": ox, "ratio": ratios})
        print(
            f"  {name} batch {batch}: torch {pt['rows_per_s'].fmt()} rows/s, ort {ox['rows_per_s'].fmt()} rows/s, "
            f"ratio {ratios.fmt(2)}",
            flush=True,
        )
    return results


def render(results: list[dict[str, Any]], *, threads: int, seconds: float, repeats: int, command: str) -> str:
    body = [
        [
            r["model"],
            r["batch"],
            r["tokens"] if r["tokens"] is not None else "-",
            r["torch"]["p50_ms"].fmt(2),
            r["torch"]["p99_ms"].fmt(2),
            r["torch"]["rows_per_s"].fmt(0),
            r["ort"]["p50_ms"].fmt(2),
            r["ort"]["p99_ms"].fmt(2),
            r["ort"]["rows_per_s"].fmt(0),
            r["ratio"].fmt(2),
        ]
        for r in results
    ]
    target = next(r for r in results if r["model"] == EMBEDDER and r["batch"] == 8)["ratio"]
    return "\n".join(
        [
            "### PyTorch eager vs ONNX Runtime, in process",
            "",
            f"Command: `{command}`",
            "",
            f"Both runtimes on {threads} intra-op thread(s) (`torch.set_num_threads({threads})`, "
            f"`intra_op_num_threads={threads}`, ORT inter-op 1), CPU execution provider, fp32. "
            f"Inputs are the golden sets' first rows (text: real queries tokenised by each version's tokenizer, "
            f"padded to the longest row of the batch; `tokens` is that width). Each cell is the median of "
            f"{repeats} interleaved runs of about {seconds:g} s each, with (min-max) over the runs; latency is per "
            f"call, throughput is rows per second; ratio = ORT throughput / PyTorch throughput.",
            "",
            table(
                [
                    "model",
                    "batch",
                    "tokens",
                    "torch p50 ms",
                    "torch p99 ms",
                    "torch rows/s",
                    "ORT p50 ms",
                    "ORT p99 ms",
                    "ORT rows/s",
                    "ORT/torch",
                ],
                body,
            ),
            "",
            f"Target: ORT >= {TARGET_RATIO}x eager PyTorch throughput for the embedder at batch 8: "
            f"measured {target.fmt(2)}x, {met(target.median >= TARGET_RATIO)}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a repository that already holds the example models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=[INTENT, EMBEDDER, RANKER])
    parser.add_argument("--out", type=Path, help="folder for inproc.json / inproc.md (run_all.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    with tempfile.TemporaryDirectory(prefix="shepherd-bench-") as scratch:
        repo = ensure_examples(args.repo, Path(scratch))
        results: list[dict[str, Any]] = []
        for name in args.models:
            results += bench_model(repo, name, threads=args.threads, seconds=args.seconds, repeats=args.repeats)
    command = "python bench/inproc.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = render(results, threads=args.threads, seconds=args.seconds, repeats=args.repeats, command=command)
    data = {
        "threads": args.threads,
        "results": [
            {
                **r,
                **{k: {m: s.as_dict() for m, s in r[k].items()} for k in ("torch", "ort")},
                "ratio": r["ratio"].as_dict(),
            }
            for r in results
        ],
    }
    write_result(args.out, "inproc", data, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
