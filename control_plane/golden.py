"""Golden inputs for a specific version, from the builders' golden sets or a version's own `golden.npz`.

Why here: the builders know how to tokenise their golden sets for the example kinds
(`builders.golden_inputs`); a model of any other kind brings its golden set as `golden.npz` in its
version folder (arrays `input__<name>` and `labels`, with the task in the manifest's
`extra.golden_task`). The control plane needs one call for both, cached because the inputs of a
version never change.
"""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builders.errors import BuilderError
from builders.repository import ModelRepository
from control_plane.errors import BrokenGoldenSet

GOLDEN_NPZ = "golden.npz"
# A golden set is probed every few seconds and held in memory per version: 64 MiB is far above any
# useful one (thousands of rows) and keeps a mistaken upload from exhausting the control plane.
MAX_GOLDEN_BYTES = 64 << 20


@dataclass(frozen=True)
class Golden:
    task: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    source: Any = None  # the builders' GoldenInputs, when it came from there

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def _from_npz(path: Path, task: str) -> Golden:
    """Read a version's own golden set, bounded: one that is too large, not an npz, or empty is refused."""
    size = path.stat().st_size
    if size > MAX_GOLDEN_BYTES:
        raise BrokenGoldenSet(f"{path} is {size} bytes, over the {MAX_GOLDEN_BYTES}-byte limit of a golden set")
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = {key.removeprefix("input__"): data[key] for key in data.files if key.startswith("input__")}
            labels = data["labels"] if "labels" in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BrokenGoldenSet(f"{path} is not a readable golden set ({type(exc).__name__})") from exc
    rows = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if not inputs or len(rows) != 1 or min(rows) < 1:
        raise BrokenGoldenSet(f"{path} holds no input__<name> arrays of the same, non-zero number of rows")
    return Golden(task=task, inputs=inputs, labels=labels)


@functools.lru_cache(maxsize=64)
def _cached(root: str, model: str, version: int) -> Golden | None:
    repo = ModelRepository(Path(root))
    folder = repo.version_dir(model, version)
    manifest = repo.read_manifest(model, version)
    if (folder / GOLDEN_NPZ).is_file():
        return _from_npz(folder / GOLDEN_NPZ, str(manifest.extra.get("golden_task", manifest.kind)))
    if manifest.kind in ("intent", "embedder", "ranker"):
        from builders.golden_inputs import golden_inputs

        try:
            found = golden_inputs(repo, model, version)
        except BuilderError as exc:
            raise BrokenGoldenSet(f"the golden set of {model} v{version} cannot be read: {exc}") from exc
        return Golden(task=found.task, inputs=found.inputs, labels=found.labels, meta=found.meta, source=found)
    return None


def golden_for(repo: ModelRepository, model: str, version: int) -> Golden | None:
    """The golden inputs of `model` version `version`, or None when the model has none.

    Raises BrokenGoldenSet when the version's golden set exists but cannot be read.
    """
    return _cached(str(repo.root.resolve()), model, int(version))


def score(golden: Golden, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Quality of `outputs` on the golden set: {"metric": ..., "value": ...}."""
    from builders import quality

    if golden.source is not None:
        from builders.golden_inputs import score as builders_score

        return builders_score(golden.source, outputs)
    first = next(iter(outputs.values()))
    if golden.labels is None:
        return {}
    if golden.task in ("classifier", "intent"):
        return quality.intent_quality(first, golden.labels)
    if golden.task == "ranker":
        return quality.ranker_quality(first.reshape(-1), golden.labels)
    return {}


def per_row(golden: Golden, outputs: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Per-row figures of `outputs` on the golden set, for the judge's paired tests (None without labels).

    {"metric": "accuracy", "values": 0/1 per row} for classifiers; {"metric": "recall@10", "values":
    recall per query} for embedders; {"metric": "auc", "values": score per row, "labels": clicks}
    for rankers. Candidate and stable are scored on the same rows, so the judge pairs them row by row.
    """
    task, labels = golden.task, golden.labels
    try:
        if task in ("classifier", "intent") and labels is not None:
            logits = _named(outputs, "logits")
            correct = np.argmax(logits.reshape(logits.shape[0], -1), axis=1) == np.asarray(labels).reshape(-1)
            return {"metric": "accuracy", "values": correct.astype(float).tolist()}
        if task == "ranker" and labels is not None:
            scores = next(iter(outputs.values())).reshape(-1).astype(float)
            clicks = np.asarray(labels).reshape(-1).astype(int)
            if scores.shape != clicks.shape:
                return None
            return {"metric": "auc", "values": scores.tolist(), "labels": clicks.tolist()}
        if task == "embedder" and "n_queries" in golden.meta and "relevant" in golden.meta:
            return {"metric": "recall@10", "values": _recalls(_named(outputs, "embedding"), golden.meta)}
    except (ValueError, IndexError, StopIteration):
        return None  # outputs that do not fit the golden set: quality cannot be compared (insufficient)
    return None


def _named(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name in outputs:
        return np.asarray(outputs[name])
    if len(outputs) == 1:
        return np.asarray(next(iter(outputs.values())))
    raise ValueError(f"outputs {sorted(outputs)} hold no {name!r}")


def _recalls(embedding: np.ndarray, meta: dict[str, Any], k: int = 10) -> list[float]:
    """Recall@k of each query with a relevant product, as `builders.quality.embedder_quality` averages it."""
    count = int(meta["n_queries"])
    flat = embedding.reshape(embedding.shape[0], -1).astype(np.float64)
    flat = flat / np.where((norms := np.linalg.norm(flat, axis=1, keepdims=True)) > 0, norms, 1.0)
    scores = flat[:count] @ flat[count:].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        len(set(top[row].tolist()) & set(wanted)) / len(set(wanted))
        for row, wanted in enumerate(meta["relevant"])
        if wanted
    ]


def agreement(golden: Golden, candidate: dict[str, np.ndarray], stable: dict[str, np.ndarray]) -> float | None:
    """How often the candidate agrees with the stable version on the same golden inputs."""
    from builders import quality

    name = next(iter(candidate))
    if name not in stable:
        return None
    task = "intent" if golden.task == "classifier" else golden.task
    return float(quality.agreement(task, candidate[name], stable[name]))


def rows(golden: Golden, round_number: int, count: int) -> dict[str, np.ndarray]:
    """Rows [k*count, (k+1)*count) of the golden inputs, wrapping around, for probe round k.

    Why slices that rotate: later probe windows are for latency and agreement samples, and
    rotating spreads them over the whole golden set instead of timing the same rows again.
    """
    total = golden.rows
    if count >= total:
        return golden.inputs
    start = (round_number * count) % total
    index = [(start + i) % total for i in range(count)]
    return {name: array[index] for name, array in golden.inputs.items()}


def quality_inputs(golden: Golden) -> dict[str, np.ndarray]:
    """The rows quality is measured on: always the whole golden set, the same rows for candidate and stable.

    Why not a tunable share: the golden metrics are defined over the whole set (recall@10 of an
    embedder ranks every query against the whole corpus of the set; AUC needs both classes), so a
    subset would measure another figure than the build's manifest recorded.
    """
    return golden.inputs
