"""The golden sets as ready-to-send model inputs, and their quality score, for one specific version.

Why per version: the control plane probes a candidate version directly (the ensemble picks no
version), and each version may carry its own tokenizer, so the text is tokenised with the
`tokenizer.json` in that version's folder and the intent labels are ordered as that version's
manifest says. The build computes its manifest quality with the same functions, so a live figure
and a build figure are comparable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builders import quality
from builders.errors import BrokenManifest, SourceError
from builders.golden_data import read_catalogue, read_catalogue_queries, read_intents
from builders.repository import ModelRepository

TOKENIZER_FILE = "tokenizer.json"
TEXT_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class GoldenInputs:
    """Inputs of the ONNX model (batch axis first), the labels, and what the scorer needs besides.

    embedder: rows are the queries, then the products; meta {"n_queries": Q, "relevant": [[product
    row indices]]}. intent: labels are class indices in the version's own label order.
    """

    task: str  # intent | embedder | ranker
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, size: int = 32) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.rows, size):
            yield {name: value[start : start + size] for name, value in self.inputs.items()}


def load_tokenizer(path: Path) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json, padding to the longest row when none is set."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for a bad file
        raise SourceError(f"tokenizer {path} cannot be read: {exc}") from exc
    if tokenizer.padding is None:
        tokenizer.enable_padding()
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], names: Sequence[str] = TEXT_INPUTS) -> dict[str, np.ndarray]:
    """Token arrays for `texts`, every row padded to the longest one (INT64, batch axis first)."""
    encodings = tokenizer.encode_batch(list(texts))
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {name: np.asarray([getattr(e, fields[name]) for e in encodings], dtype=np.int64) for name in names}


def intent_golden(tokenizer: Any, labels: Sequence[str], *, limit: int | None = None) -> GoldenInputs:
    """The golden queries with their intent as an index into `labels` (the model's id2label order)."""
    rows = read_intents()[:limit]
    unknown = sorted({intent for _, intent in rows} - set(labels))
    if unknown:
        raise SourceError(f"the model's labels {list(labels)} do not cover the golden intents {unknown}")
    index = {name: i for i, name in enumerate(labels)}
    return GoldenInputs(
        task="intent",
        inputs=tokenize(tokenizer, [query for query, _ in rows]),
        labels=np.asarray([index[intent] for _, intent in rows], dtype=np.int64),
        meta={"rows": len(rows)},
    )


def embedder_golden(tokenizer: Any, *, limit: int | None = None) -> GoldenInputs:
    """Catalogue queries then product titles; `limit` keeps that many queries and a catalogue to match.

    With a limit, the products kept are every product relevant to a kept query, then the first
    others in catalogue order up to `limit` products, so recall still has distractors to beat.
    """
    queries = read_catalogue_queries()[:limit]
    products = read_catalogue()
    if limit is not None:
        wanted = {pid for _, ids in queries for pid in ids}
        kept = [p for p in products if p[0] in wanted]
        kept += [p for p in products if p[0] not in wanted][: max(0, limit - len(kept))]
        order = {pid: i for i, (pid, _) in enumerate(products)}
        products = sorted(kept, key=lambda p: order[p[0]])
    row_of = {pid: i for i, (pid, _) in enumerate(products)}
    relevant = [[row_of[pid] for pid in ids if pid in row_of] for _, ids in queries]
    texts = [q for q, _ in queries] + [title for _, title in products]
    return GoldenInputs(
        task="embedder",
        inputs=tokenize(tokenizer, texts),
        labels=None,
        meta={"n_queries": len(queries), "relevant": relevant, "product_ids": [pid for pid, _ in products]},
    )


def ranker_golden(*, limit: int | None = None, path: Path | None = None) -> GoldenInputs:
    """The ranker golden set (builders/golden/ranker.csv, written and read by builders.ranker)."""
    from builders import ranker

    data = ranker.read_golden_csv(path or ranker.GOLDEN_CSV)
    inputs = {name: value[:limit] for name, value in data.inputs().items()}
    clicks = data.clicks[:limit]
    return GoldenInputs(task="ranker", inputs=inputs, labels=clicks, meta={"rows": int(clicks.shape[0])})


def golden_inputs(repo: ModelRepository, model: str, version: int, limit: int | None = None) -> GoldenInputs:
    """The golden set of `model` version `version`, ready to send to that version directly.

    The task is the manifest's `kind`; text models are tokenised with the version's own
    tokenizer.json, intent labels ordered by the manifest's `source.labels`.
    """
    manifest = repo.read_manifest(model, version)
    if manifest.kind == "ranker":
        return _ranker_for(manifest.source, limit)
    if manifest.kind not in ("intent", "embedder"):
        raise BrokenManifest(f"{model} version {version} is a {manifest.kind!r} model; it has no builders golden set")
    tokenizer = load_tokenizer(repo.version_dir(model, version) / TOKENIZER_FILE)
    if manifest.kind == "embedder":
        return embedder_golden(tokenizer, limit=limit)
    labels = manifest.source.get("labels")
    if not labels:
        raise BrokenManifest(f"{model} version {version}: the manifest names no intent labels (source.labels)")
    return intent_golden(tokenizer, labels, limit=limit)


def _ranker_for(source: dict[str, Any], limit: int | None) -> GoldenInputs:
    """The golden file the version was built with when it is still there, else the shipped one."""
    recorded = Path(str(source.get("golden") or ""))
    return ranker_golden(limit=limit, path=recorded if source.get("golden") and recorded.is_file() else None)


def score(golden: GoldenInputs, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Quality of a version's outputs on its golden inputs, by builders.quality (same as the build)."""
    if golden.task == "intent":
        return quality.intent_quality(_output(outputs, "logits"), _labels(golden))
    if golden.task == "embedder":
        embedding = _output(outputs, "embedding")
        count = int(golden.meta["n_queries"])
        return quality.embedder_quality(embedding[:count], embedding[count:], golden.meta["relevant"])
    if golden.task == "ranker":
        return quality.ranker_quality(next(iter(outputs.values())).reshape(-1), _labels(golden))
    raise SourceError(f"unknown golden task {golden.task!r}")


def _output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name in outputs:
        return np.asarray(outputs[name])
    if len(outputs) == 1:
        return np.asarray(next(iter(outputs.values())))
    raise SourceError(f"outputs {sorted(outputs)} hold no {name!r}")


def _labels(golden: GoldenInputs) -> np.ndarray:
    if golden.labels is None:
        raise SourceError(f"the {golden.task} golden set has no labels")
    return golden.labels
