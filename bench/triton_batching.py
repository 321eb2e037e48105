"""Issue 3, through Triton: dynamic batching ON vs OFF, measured with NVIDIA's perf_analyzer over gRPC.

Why: dynamic batching is what the builders switch on by default; Triton users judge that choice with
perf_analyzer, so the figures come from it. Each example model is published twice into a scratch
repository through ModelRepository: under its own name (the built config, dynamic batching on) and as
`<name>_nobatch` (the same file and config with `dynamic_batching` removed). Both are loaded in the real
local Triton and driven at concurrency 1, 4 and 16, one request = one row, with golden inputs.

    bash bench/install_perf_analyzer.sh      # once
    .venv/bin/python bench/triton_batching.py [--repo model_repository] [--repeats 2] [--window-ms 2000]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import tritonclient.grpc as grpcclient

from bench.common import CUDART_LIB, PERF_ANALYZER, ROOT, Spread, met, table, write_result
from bench.examples_repo import ensure_examples, example
from builders.examples import EMBEDDER, INTENT, RANKER
from builders.repository import ModelRepository
from control_plane.local_triton import LocalTriton

CONCURRENCY = (1, 4, 16)
NOBATCH = "_nobatch"
TARGET = 2.0  # dynamic batching / no batching throughput at concurrency 16
INPUT_ROWS = 64


def publish_pair(source: ModelRepository, target: ModelRepository, name: str) -> tuple[str, str]:
    """Publish `name` as built (batching on) and `name_nobatch` (dynamic_batching cleared) into `target`."""
    version = source.versions(name)[-1]
    manifest = source.read_manifest(name, version)
    onnx = source.version_dir(name, version) / "model.onnx"
    config = source.read_config(name)
    if not config.HasField("dynamic_batching"):
        raise SystemExit(f"{name}'s config has no dynamic_batching to compare against")
    target.publish_version(name, files={"model.onnx": onnx}, manifest=replace(manifest, version=0), config=config)
    plain = type(config)()
    plain.CopyFrom(config)
    plain.name = name + NOBATCH
    plain.ClearField("dynamic_batching")
    target.publish_version(
        plain.name, files={"model.onnx": onnx}, manifest=replace(manifest, model=plain.name, version=0), config=plain
    )
    return name, plain.name


def input_data(inputs: dict[str, np.ndarray], path: Path) -> Path:
    """perf_analyzer --input-data JSON: golden rows, one per request, text trimmed to one shared width.

    One shared width so that requests can be batched together (Triton batches equal shapes only).
    """
    chosen = {name: value[:INPUT_ROWS] for name, value in inputs.items()}
    if "attention_mask" in chosen:
        width = int(chosen["attention_mask"].sum(axis=1).max())
        chosen = {name: value[:, :width] for name, value in chosen.items()}
    count = next(iter(chosen.values())).shape[0]
    data = [
        {
            name: {"content": value[i].reshape(-1).tolist(), "shape": list(value[i].shape)}
            for name, value in chosen.items()
        }
        for i in range(count)
    ]
    path.write_text(json.dumps({"data": data}))
    return path


def perf_analyzer(model: str, url: str, data: Path, concurrency: int, window_ms: int, csv_path: Path) -> dict[str, Any]:
    env = {**os.environ, "LD_LIBRARY_PATH": f"{CUDART_LIB}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    command = [
        str(PERF_ANALYZER),
        "-m", model,
        "-u", url,
        "-i", "grpc",
        "-b", "1",
        "--input-data", str(data),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(window_ms),
        "--stability-percentage", "50",
        "--max-trials", "10",
        "-f", str(csv_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    if done.returncode != 0 or not csv_path.is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
        return {"error": f"perf_analyzer exit {done.returncode}: {' | '.join(tail)}"}
    row = next(csv.DictReader(io.StringIO(csv_path.read_text())))
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000.0,
        "p99_ms": float(row["p99 latency"]) / 1000.0,
        "queue_ms": float(row.get("Server Queue") or 0) / 1000.0,
        "compute_ms": float(row.get("Server Compute Infer") or 0) / 1000.0,
    }


def run(
    repo: ModelRepository, scratch: Path, *, repeats: int, window_ms: int, models: list[str]
) -> list[dict[str, Any]]:
    target = ModelRepository(scratch / "perf_repository")
    target.root.mkdir(parents=True)
    pairs, datasets = {}, {}
    for name in models:
        pairs[name] = publish_pair(repo, target, name)
        datasets[name] = input_data(example(repo, name).inputs, scratch / f"{name}-input.json")
    results: list[dict[str, Any]] = []
    with LocalTriton(target.root, state_dir=scratch / "triton-state") as triton:
        client = grpcclient.InferenceServerClient(triton.state.grpc_url)
        for name in models:
            for model in pairs[name]:
                client.load_model(model)
            measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for attempt in range(repeats):
                for concurrency in CONCURRENCY:
                    for mode, model in zip(("on", "off"), pairs[name], strict=True):
                        csv_path = scratch / f"{model}-{concurrency}-{attempt}.csv"
                        figures = perf_analyzer(
                            model, triton.state.grpc_url, datasets[name], concurrency, window_ms, csv_path
                        )
                        measured.setdefault((mode, concurrency), []).append(figures)
                        print(f"  {model} c={concurrency} #{attempt}: {figures}", flush=True)
            for model in pairs[name]:
                client.unload_model(model)
            for concurrency in CONCURRENCY:
                row: dict[str, Any] = {"model": name, "concurrency": concurrency}
                for mode in ("on", "off"):
                    good = [f for f in measured[(mode, concurrency)] if "error" not in f]
                    errors = [f["error"] for f in measured[(mode, concurrency)] if "error" in f]
                    row[mode] = (
                        {
                            key: Spread.of([f[key] for f in good])
                            for key in ("throughput", "p50_ms", "p99_ms", "queue_ms")
                        }
                        if good
                        else None
                    )
                    row[f"{mode}_errors"] = errors
                on, off = row["on"], row["off"]
                row["ratio"] = on["throughput"].median / off["throughput"].median if on and off else None
                results.append(row)
        client.close()
    return results


def render(results: list[dict[str, Any]], *, repeats: int, window_ms: int, command: str) -> str:
    def cell(figures: Any, key: str, digits: int) -> str:
        return figures[key].fmt(digits) if figures else "failed"

    body = [
        [
            r["model"],
            r["concurrency"],
            cell(r["on"], "throughput", 1),
            cell(r["on"], "p50_ms", 2),
            cell(r["on"], "p99_ms", 2),
            cell(r["off"], "throughput", 1),
            cell(r["off"], "p50_ms", 2),
            cell(r["off"], "p99_ms", 2),
            f"{r['ratio']:.2f}" if r["ratio"] is not None else "-",
        ]
        for r in results
    ]
    at16 = [r for r in results if r["concurrency"] == 16 and r["ratio"] is not None]
    verdicts = ", ".join(f"{r['model']} {r['ratio']:.2f}x ({met(r['ratio'] >= TARGET)})" for r in at16)
    errors = [
        f"{r['model']} c={r['concurrency']}: {e}" for r in results for m in ("on", "off") for e in r[f"{m}_errors"]
    ]
    lines = [
        "### Dynamic batching ON vs OFF through the local Triton (perf_analyzer, gRPC)",
        "",
        f"Command: `{command}`",
        "",
        "NVIDIA perf_analyzer (from the tritonclient 2.48.0 wheel, installed by `bench/install_perf_analyzer.sh`), "
        f"`-i grpc -b 1 --concurrency-range C:C --measurement-interval {window_ms} --stability-percentage 50 "
        "--max-trials 10`, with `--input-data` a JSON file of the first 64 golden rows (text models: real golden "
        "queries tokenised by the version's own tokenizer, all trimmed to one width so requests can be batched; "
        "ranker: golden feature rows). `on` is the config the builders wrote (`max_batch_size: 32`, "
        "`dynamic_batching { max_queue_delay_microseconds: 1000 }`, one CPU instance); `off` is the same file and "
        "config with `dynamic_batching` removed, published as `<model>_nobatch`. Throughput is inferences/s; "
        f"p50/p99 are perf_analyzer's client latencies in ms. Median of {repeats} runs with (min-max).",
        "",
        table(
            [
                "model",
                "concurrency",
                "ON infer/s",
                "ON p50 ms",
                "ON p99 ms",
                "OFF infer/s",
                "OFF p50 ms",
                "OFF p99 ms",
                "ON/OFF",
            ],
            body,
        ),
        "",
        f"Target: dynamic batching >= {TARGET:g}x the throughput of no batching at concurrency 16: {verdicts}.",
        "",
    ]
    if errors:
        lines += ["perf_analyzer runs that failed (not in the medians):", ""] + [f"- {e}" for e in errors] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a repository that already holds the example models")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--models", nargs="*", default=[INTENT, EMBEDDER, RANKER])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not os.access(PERF_ANALYZER, os.X_OK):
        raise SystemExit(f"perf_analyzer not found at {PERF_ANALYZER}; run bash {ROOT}/bench/install_perf_analyzer.sh")
    with tempfile.TemporaryDirectory(prefix="shepherd-bench-") as scratch:
        repo = ensure_examples(args.repo, Path(scratch))
        results = run(repo, Path(scratch), repeats=args.repeats, window_ms=args.window_ms, models=args.models)
    command = "python bench/triton_batching.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = render(results, repeats=args.repeats, window_ms=args.window_ms, command=command)
    data = {
        "results": [
            {
                **r,
                "on": {k: v.as_dict() for k, v in r["on"].items()} if r["on"] else None,
                "off": {k: v.as_dict() for k, v in r["off"].items()} if r["off"] else None,
            }
            for r in results
        ]
    }
    write_result(args.out, "triton_batching", data, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
