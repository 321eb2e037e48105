"""The example models to benchmark: built once into a scratch repository, or reused from --repo.

Why: every issue-3 figure is about the models users ship (the real MiniLM embedder, the intent
classifier, the CTR ranker), built by the same verified pipeline, and their PyTorch sources are
reloaded from what each manifest records so eager PyTorch and ONNX Runtime run the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import common  # noqa: F401  (puts the project root on sys.path)
from builders.examples import EXAMPLES, build_examples
from builders.golden_inputs import golden_inputs
from builders.repository import ModelRepository


@dataclass(frozen=True)
class Example:
    name: str
    version: int
    kind: str
    onnx: Path
    inputs: dict[str, np.ndarray]  # golden inputs (text: tokenised real queries), batch axis first


def ensure_examples(repo: Path | None, scratch: Path) -> ModelRepository:
    """`repo` when it already holds the three examples, else a fresh build under `scratch`."""
    if repo is not None:
        found = ModelRepository(repo)
        missing = [name for name in EXAMPLES if not found.versions(name)]
        if missing:
            raise SystemExit(f"--repo {repo} lacks the example models {missing}; build them or leave --repo out")
        return found
    built = ModelRepository(scratch / "model_repository")
    built.root.mkdir(parents=True, exist_ok=True)
    for result in build_examples(built):
        result.raise_for_failure()
    return built


def example(repo: ModelRepository, name: str) -> Example:
    version = repo.versions(name)[-1]
    manifest = repo.read_manifest(name, version)
    golden = golden_inputs(repo, name, version)
    return Example(name, version, manifest.kind, repo.version_dir(name, version) / "model.onnx", golden.inputs)


def torch_module(repo: ModelRepository, item: Example) -> torch.nn.Module:
    """The eager PyTorch module the ONNX file was exported from (same weights, same wrapper)."""
    source: dict[str, Any] = repo.read_manifest(item.name, item.version).source
    if item.kind == "ranker":
        from builders.ranker import load_ranker_module

        return load_ranker_module(str(source["factory"]), Path(source["path"]))
    from builders.text_models import inspect_checkpoint, load_text_module

    return load_text_module(inspect_checkpoint(Path(source["path"]), item.kind))


def rows(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` golden rows (repeated if the golden set is shorter), text trimmed to its own padding."""
    total = next(iter(inputs.values())).shape[0]
    index = np.arange(batch) % total
    chosen = {name: value[index] for name, value in inputs.items()}
    mask = chosen.get("attention_mask")
    if mask is not None:  # text: pad to the longest row of this batch, as a tokenizer call for it would
        width = max(int(mask.sum(axis=1).max()), 1)
        chosen = {name: value[:, :width] for name, value in chosen.items()}
    return {name: np.ascontiguousarray(value) for name, value in chosen.items()}
